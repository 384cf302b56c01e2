"""Forward time of the B/16 12x384 model on one 8x224x224 clip (fp32, this CPU), side by side: the
two exact forms of the adapter's temporal conv (3 shifted multiply-adds vs permute + nn.Conv3d), and
the last block trimmed to the class token (the default) vs run on every token.

    python benchmarks/bench_model.py [--repeats 7] [--threads N]

Prints a markdown table of medians and the ratio; numbers go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from stadapter_deploy import build_model, hardware
from stadapter_deploy.model import STAdapter
from stadapter_deploy.timing import interleaved_ms, median_ms

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import untrimmed  # noqa: E402  (the untrimmed copy: a subclass, as the tests compare it)


def randomize_adapters(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, STAdapter):
                module.conv.weight.normal_(std=0.1)
                module.conv.bias.normal_(std=0.1)


def trimmed_and_full_ms(model: torch.nn.Module, clip: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Median forward ms of the model (its last block on the class token) and of a copy that runs every
    token through it (tests/helpers.py's subclass), interleaved so load hits both alike."""
    full = untrimmed(model)
    ms = interleaved_ms({"trimmed": lambda: model(clip), "full": lambda: full(clip)}, repeats)
    return ms["trimmed"].wall_ms, ms["full"].wall_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per measurement (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = build_model("vit_b16_adapter12x384", num_classes=400).eval()
    randomize_adapters(model)
    clip = torch.randn(1, 3, 8, 224, 224)

    rows = []
    with torch.inference_mode():
        for name, form in (("shifted multiply-adds", "shift"), ("permute + nn.Conv3d", "conv3d")):
            with model.temporal_conv(form):
                rows.append((f"B/16 12x384 forward, 1x8x224x224, {name}", median_ms(lambda: model(clip), args.repeats)))
        trimmed, full = trimmed_and_full_ms(model, clip, args.repeats)
        rows.append(("B/16 12x384 forward, Conv3d form, last block on the class token only", trimmed))
        rows.append(("B/16 12x384 forward, Conv3d form, last block on every token", full))

        adapter = model.transformer.resblocks[0].adapter_pre_mlp
        h = torch.randn(8, 8, 196, 384)  # [B, T, P, Ca]: the adapter's hidden tokens for a batch of 8 clips
        shifted = median_ms(lambda: adapter.temporal_conv(h), args.repeats * 3)
        conv3d = median_ms(lambda: adapter.conv3d_forward(h), args.repeats * 3)
        rows.append(("temporal conv alone, [8, 8, 196, 384], shifted multiply-adds", shifted))
        rows.append(("temporal conv alone, [8, 8, 196, 384], permute + nn.Conv3d", conv3d))

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"CPU {hardware.cpu_name()}, kind {hardware.cpu_kind()}, flags: {' '.join(hardware.simd_flags())}\n")
    print("| measurement | median ms |\n|---|---|")
    for name, ms in rows:
        print(f"| {name} | {ms:.1f} |")
    print(f"\nfull forward: Conv3d form / shifted form = {rows[1][1] / rows[0][1]:.3f}")
    print(f"temporal conv alone: Conv3d form / shifted form = {conv3d / shifted:.2f}")
    print(f"trimmed last block / full last block = {trimmed / full:.3f}")


if __name__ == "__main__":
    main()
