"""Training throughput and peak memory: this project's model vs a plain implementation, side by side.

The plain variant is what a straightforward port looks like: sequence-first tokens, attention through
nn.MultiheadAttention, the adapter as permute -> nn.Conv3d -> permute with an in-place residual add.
It loads the very same weights, and the two are checked to agree before anything is timed.

    python benchmarks/bench_train.py                      # CPU: B/16 12x384, 8 frames, batch 4
    python benchmarks/bench_train.py --device cuda --batch 32 --precision fp16   # GPU

One training step = forward, cross-entropy, backward, AdamW step (adapters + head trainable, the
backbone frozen: gradients still flow back through every block to the first adapter). Rounds
alternate the two variants (A B A B ...) so that load from other processes hits both alike.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from stadapter_deploy.model import build_model
from stadapter_deploy.model.vit import LayerNorm, QuickGELU, STAdapterViT
from stadapter_deploy.train.loop import cast_backbone
from stadapter_deploy.train.optim import build_optimizer

# ------------------------------------------------------------------ the plain implementation


class PlainAdapter(nn.Module):
    def __init__(self, width: int, adapter_width: int):
        super().__init__()
        self.fc1 = nn.Linear(width, adapter_width)
        self.conv = nn.Conv3d(adapter_width, adapter_width, (3, 1, 1), padding=(1, 0, 0), groups=adapter_width)
        self.fc2 = nn.Linear(adapter_width, width)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        # x: [L, B*T, D] sequence-first, as OpenAI CLIP keeps it
        length, bt, _ = x.shape
        side = math.isqrt(length - 1)
        h = self.fc1(x[1:])  # [L-1, B*T, Ca]
        ca = h.shape[-1]
        h = h.permute(1, 2, 0).reshape(bt // num_frames, num_frames, ca, side, side)  # [B, T, Ca, H', W']
        h = self.conv(h.transpose(1, 2).contiguous())  # [B, Ca, T, H', W']
        h = h.transpose(1, 2).reshape(bt, ca, length - 1).permute(2, 0, 1)  # [L-1, B*T, Ca]
        x[1:] += self.fc2(h)  # in-place residual on the patch tokens
        return x


class PlainBlock(nn.Module):
    def __init__(self, width: int, heads: int, adapter_width: int, pre_attn: bool, pre_mlp: bool):
        super().__init__()
        self.ln_1 = LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_2 = LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, 4 * width))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(4 * width, width))
        self.adapter_pre_attn = PlainAdapter(width, adapter_width) if pre_attn else None
        self.adapter_pre_mlp = PlainAdapter(width, adapter_width) if pre_mlp else None

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        if self.adapter_pre_attn is not None:
            x = self.adapter_pre_attn(x, num_frames)
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        if self.adapter_pre_mlp is not None:
            x = self.adapter_pre_mlp(x, num_frames)
        return x + self.mlp(self.ln_2(x))


class PlainViT(nn.Module):
    """The same parameters under the same names as STAdapterViT, computed the plain way."""

    def __init__(self, ref: STAdapterViT):
        super().__init__()
        cfg = self.cfg = ref.cfg
        d = cfg.width
        self.conv1 = nn.Conv2d(3, d, cfg.patch_size, cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(d))
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.tokens_per_frame, d))
        self.ln_pre = LayerNorm(d)
        blocks = set(cfg.adapter_blocks())
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList(
            PlainBlock(
                d,
                cfg.heads,
                cfg.adapter_width,
                i in blocks and cfg.adapter_pre_attn,
                i in blocks and cfg.adapter_pre_mlp,
            )
            for i in range(cfg.layers)
        )
        self.ln_post = LayerNorm(d)
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(d, cfg.num_classes)
        self.load_state_dict(ref.state_dict())
        for name, p in self.named_parameters():
            p.requires_grad = ref.get_parameter(name).requires_grad

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        b, _, t, h, w = clip.shape
        x = self.conv1(clip.transpose(1, 2).reshape(b * t, 3, h, w).to(self.conv1.weight.dtype))
        x = x.flatten(2).transpose(1, 2)  # [B*T, P, D]
        cls = self.class_embedding.to(x.dtype).expand(b * t, 1, -1)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype))
        x = x.permute(1, 0, 2)  # [L, B*T, D]
        for block in self.transformer.resblocks:
            x = block(x, t)
        feats = self.ln_post(x[0].reshape(b, t, -1).mean(dim=1))  # [B, D]
        return self.fc(self.dropout(feats).to(self.fc.weight.dtype))


# ------------------------------------------------------------------ measuring


def reset_peak_memory(device: torch.device) -> float:
    """Start a new peak window; returns the baseline (MB) the peak is measured against."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed arenas back so the peak starts from now
    with open("/proc/self/clear_refs", "w") as f:  # "5" resets the process's peak RSS (Linux >= 4.0)
        f.write("5")
    return rss_mb("VmRSS")


def rss_mb(field: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory_mb(device: torch.device, baseline: float) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20 - baseline
    return rss_mb("VmHWM") - baseline


def train_steps(model, optimizer, clips, labels, steps, autocast, scaler, device) -> tuple[list, list, float]:
    """Wall seconds and CPU seconds per step for `steps` steps, and the peak memory above the model's own.

    CPU seconds (this process's, all threads) are what a shared machine disturbs least.
    """
    baseline = reset_peak_memory(device)
    times, cpu_times = [], []
    for _ in range(steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        with autocast():
            logits = model(clips)
        loss = F.cross_entropy(logits.float(), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    return times, cpu_times, peak_memory_mb(device, baseline)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="vit_b16_adapter12x384")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=2, help="timed steps per round (after one warm-up step)")
    p.add_argument("--rounds", type=int, default=2, help="rounds; each times both variants")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)

    ours = build_model(args.preset)  # the model takes any number of frames
    with torch.no_grad():  # non-zero adapters, so the parity check exercises them
        for prm in ours.parameters():
            if prm.requires_grad:
                prm.normal_(0, 0.02)
    plain = PlainViT(ours)
    size = ours.cfg.image_size
    clips = torch.randn(args.batch, 3, args.frames, size, size, device=device)
    labels = torch.randint(0, ours.cfg.num_classes, (args.batch,), device=device)
    with torch.no_grad():
        a, b = ours.eval()(clips[:1].cpu()), plain.eval()(clips[:1].cpu())
    print(f"parity (fp32, 1 clip): max |ours - plain| = {(a - b).abs().max().item():.2e}")

    half = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(args.precision)
    variants = {}
    for name, model in (("ours", ours), ("plain", plain)):
        model.to(device).train()
        if half is not None and device.type == "cuda":
            cast_backbone(model, half)
        opt = build_optimizer(model, lr=1e-4, weight_decay=0.01)
        variants[name] = (model, opt)
    autocast = (lambda: torch.autocast(device.type, dtype=half)) if half is not None else contextlib.nullcontext
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")

    times = {n: [] for n in variants}
    cpu_times = {n: [] for n in variants}
    peaks = {n: [] for n in variants}
    for r in range(args.rounds):
        for name, (model, opt) in variants.items():
            train_steps(model, opt, clips, labels, 1, autocast, scaler, device)  # warm-up
            t, cpu, peak = train_steps(model, opt, clips, labels, args.steps, autocast, scaler, device)
            times[name] += t
            cpu_times[name] += cpu
            peaks[name].append(peak)
            print(
                f"round {r + 1}: {name:5s} {statistics.median(t):7.2f} s/step wall, "
                f"{statistics.median(cpu):7.2f} CPU s/step, peak +{peak:7.0f} MB",
                flush=True,
            )

    print(
        f"\n{args.preset}, {args.frames} frames, batch {args.batch}, {args.precision} on {device}, "
        f"{torch.get_num_threads()} threads; medians over {args.rounds * args.steps} steps"
    )
    print("| variant | s/step (wall) | clips/s | CPU s/step | peak memory (MB) |")
    print("|---|---|---|---|---|")
    rate, cpu = {}, {}
    for name in variants:
        step = statistics.median(times[name])
        rate[name], cpu[name] = args.batch / step, statistics.median(cpu_times[name])
        print(f"| {name} | {step:.2f} | {rate[name]:.3f} | {cpu[name]:.1f} | {max(peaks[name]):.0f} |")
    mem = max(peaks["ours"]) / max(peaks["plain"])
    print(
        f"\nours / plain: {rate['ours'] / rate['plain']:.2f}x clips/s (wall), "
        f"{cpu['plain'] / cpu['ours']:.2f}x (CPU time), {mem:.2f}x peak memory"
    )


if __name__ == "__main__":
    main()
