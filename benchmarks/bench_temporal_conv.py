"""Time the two exact ONNX forms of the adapter's temporal conv in ONNX Runtime on the CPU.

"shift": 3 shifted multiply-adds on the token layout; "conv3d": the literal depthwise Conv3d between
permutes. Both the single adapter (B/16 shapes) and the whole B/16 12x384 model are timed, the two
forms interleaved, medians reported.

    python benchmarks/bench_temporal_conv.py [--repeats 7] [--full-repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from stadapter_deploy import build_model
from stadapter_deploy.export.onnx_export import export_onnx
from stadapter_deploy.model import STAdapter
from stadapter_deploy.runtime.runners.ort_runner import make_session

FORMS = ("shift", "conv3d")


class ConvOnly(torch.nn.Module):
    """Just the temporal conv on hidden tokens [B, T, P, C]: the only part where the forms differ."""

    def __init__(self, use_conv3d: bool):
        super().__init__()
        self.adapter, self.use_conv3d = STAdapter(768, 384), use_conv3d
        torch.nn.init.normal_(self.adapter.conv.weight, std=0.1)

    def forward(self, h):
        return self.adapter.conv3d_forward(h) if self.use_conv3d else self.adapter.temporal_conv(h)


class OneAdapter(torch.nn.Module):
    def __init__(self, use_conv3d: bool, frames: int):
        super().__init__()
        self.adapter, self.use_conv3d, self.frames = STAdapter(768, 384), use_conv3d, frames
        torch.nn.init.normal_(self.adapter.conv.weight, std=0.1)

    def forward(self, x):  # [B*T, 197, 768]
        return self.adapter(x, self.frames, self.use_conv3d)


def time_sessions(sessions: dict, x: np.ndarray, repeats: int) -> dict[str, float]:
    times = {k: [] for k in sessions}
    for s in sessions.values():
        s.run(None, {s.get_inputs()[0].name: x})  # warm-up
    for _ in range(repeats):
        for k, s in sessions.items():  # interleaved so machine noise hits both forms alike
            t = time.perf_counter()
            s.run(None, {s.get_inputs()[0].name: x})
            times[k].append((time.perf_counter() - t) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=30, help="timed runs of the single adapter per form")
    ap.add_argument("--full-repeats", type=int, default=5, help="timed runs of the whole model per form")
    ap.add_argument("--skip-model", action="store_true", help="time the conv and one adapter only")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1, help="clips per run")
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # the temporal conv alone, B/16 12x384 hidden shapes
        h = torch.randn(args.batch, 8, 196, 384)
        sessions = {}
        for form in FORMS:
            path = tmp / f"conv_{form}.onnx"
            torch.onnx.export(
                ConvOnly(form == "conv3d").eval(), (h,), str(path), input_names=["h"], opset_version=18, dynamo=False
            )
            sessions[form] = make_session(path, ["CPUExecutionProvider"], args.threads)
        conv_ms = time_sessions(sessions, h.numpy(), args.repeats * 5)
        # one adapter, B/16 token shapes
        x = torch.randn(args.batch * 8, 197, 768)
        sessions = {}
        for form in FORMS:
            path = tmp / f"adapter_{form}.onnx"
            net = OneAdapter(form == "conv3d", 8).eval()
            torch.onnx.export(net, (x,), str(path), input_names=["x"], opset_version=18, dynamo=False)
            sessions[form] = make_session(path, ["CPUExecutionProvider"], args.threads)
        adapter_ms = time_sessions(sessions, x.numpy(), args.repeats)
        full_ms = {form: float("nan") for form in FORMS} if args.skip_model else time_full_model(tmp, args)
    print(f"ONNX Runtime CPU, {args.threads} threads, batch {args.batch}, medians of interleaved runs")
    print("| form | temporal conv alone (ms) | one adapter (ms) | B/16 12x384 model (ms/batch) |")
    print("|---|---|---|---|")
    for form in FORMS:
        print(f"| {form} | {conv_ms[form]:.3f} | {adapter_ms[form]:.3f} | {full_ms[form]:.0f} |")
    ratio = lambda d: d["conv3d"] / d["shift"]
    print(f"conv3d / shift: conv {ratio(conv_ms):.2f}x, adapter {ratio(adapter_ms):.2f}x, model {ratio(full_ms):.3f}x")


def time_full_model(tmp: Path, args) -> dict[str, float]:
    model = build_model("vit_b16_adapter12x384").eval()
    clips = torch.randn(args.batch, 3, 8, 224, 224).numpy()
    sessions = {}
    for form in FORMS:
        path = export_onnx(model, tmp / f"model_{form}.onnx", form=form)
        sessions[form] = make_session(path, ["CPUExecutionProvider"], args.threads)
    return time_sessions(sessions, clips, args.full_repeats)


if __name__ == "__main__":
    main()
