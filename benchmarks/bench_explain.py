"""Predictor.explain and Predictor.embed against Predictor.classify on the CPU, B/16 12x384 (random weights).

One clip per call (views=1) of one generated H.264 video (10 s, 640x360). Whole calls (decode included)
and the model alone (the same decoded clip): classify and embed on torch-cpu fp32 and onnxruntime-cpu
fp32, explain (the bundle's fp32 torch model, whatever the Predictor's backend). The calls run interleaved,
one of each per round, so load from other processes hits them alike; medians are reported, with each one's
ratio to classify on the same backend.

    python benchmarks/bench_explain.py [--rounds 5] [--bundle BUNDLE] [--threads N]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path


def make_bundle(folder: Path) -> Path:
    """B/16 12x384 with random weights (adapters on), exported without the parity gate (a benchmark)."""
    import torch

    from stadapter_deploy import build_model
    from stadapter_deploy.export.exporter import ExportOptions, export_bundle, load_source
    from stadapter_deploy.model import save_checkpoint

    torch.manual_seed(0)
    net = build_model("vit_b16_adapter12x384", num_classes=400)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if ".adapter_pre_" in name:
                p.normal_(std=0.02)
    # the K400 recipe's dataset and preprocessing (the exporter takes them from the checkpoint's meta)
    checkpoint = save_checkpoint(net.eval(), folder / "checkpoint", extra={"dataset": "k400"})
    options = ExportOptions(progress=False, verify=False)
    return export_bundle(load_source(checkpoint=checkpoint), folder / "bundle", options).path


def make_video(path: Path) -> Path:
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30"]
        + ["-t", "10", "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, help="a B/16 bundle (default: one exported here, about a minute)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, help="CPU threads for both engines (default: theirs)")
    args = p.parse_args()

    import torch

    from stadapter_deploy.hardware import cpu_kind, simd_flags
    from stadapter_deploy.model.gradcam import heatmaps
    from stadapter_deploy.runtime.predictor import load_predictor
    from stadapter_deploy.timing import interleaved_ms

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = args.bundle or make_bundle(tmp)
        video = str(make_video(tmp / "video.mp4"))
        on_torch = load_predictor(bundle, backend="torch-cpu", precision="fp32", threads=args.threads)
        on_ort = load_predictor(bundle, backend="onnxruntime-cpu", precision="fp32", threads=args.threads)
        model = on_torch.torch_model()
        clips = on_torch.preprocess(video, views=1).clips  # [1, 3, 8, 224, 224]
        calls = {
            "torch classify": lambda: on_torch.classify(video, views=1),
            "torch embed": lambda: on_torch.embed(video, views=1),
            "explain": lambda: on_torch.explain(video, views=1),
            "onnxruntime classify": lambda: on_ort.classify(video, views=1),
            "onnxruntime embed": lambda: on_ort.embed(video, views=1),
        }
        model_only = {
            "torch predict": lambda: on_torch.predict(clips),
            "torch predict_with_features": lambda: on_torch.predict_with_features(clips),
            "heatmaps (explain's model work)": lambda: heatmaps(model, clips),
            "onnxruntime predict": lambda: on_ort.predict(clips),
            "onnxruntime predict_with_features": lambda: on_ort.predict_with_features(clips),
        }
        whole = interleaved_ms(calls, args.rounds)
        alone = interleaved_ms(model_only, args.rounds)
    print(f"\nCPU: {cpu_kind()} ({' '.join(simd_flags())}); torch threads {torch.get_num_threads()}")
    print(f"B/16 12x384, random weights, one 8x224x224 clip per call; medians of {args.rounds} interleaved rounds\n")
    print("| call (decode included) | median ms | CPU ms | vs classify, same backend |\n|---|---:|---:|---:|")
    for name, m in whole.items():
        base = whole["onnxruntime classify" if name.startswith("onnxruntime") else "torch classify"].wall_ms
        print(f"| {name} | {m.wall_ms:.0f} | {m.cpu_ms:.0f} | {m.wall_ms / base:.2f}x |")
    print("\n| model alone (the same decoded clip) | median ms | CPU ms | vs predict, same backend |")
    print("|---|---:|---:|---:|")
    for name, m in alone.items():
        base = alone["onnxruntime predict" if name.startswith("onnxruntime") else "torch predict"].wall_ms
        print(f"| {name} | {m.wall_ms:.0f} | {m.cpu_ms:.0f} | {m.wall_ms / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
