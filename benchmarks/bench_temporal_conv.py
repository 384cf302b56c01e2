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
from stadapter_deploy.model import STAdapter
from stadapter_deploy.runtime.backends.ort_backend import make_session
from stadapter_deploy.runtime.onnx_export import export_onnx

FORMS = ("shift", "conv3d")


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
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1, help="clips per run")
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # one adapter, B/16 token shapes
        x = torch.randn(args.batch * 8, 197, 768)
        sessions = {}
        for form in FORMS:
            path = tmp / f"adapter_{form}.onnx"
            net = OneAdapter(form == "conv3d", 8).eval()
            torch.onnx.export(net, (x,), str(path), input_names=["x"], opset_version=18, dynamo=False)
            sessions[form] = make_session(path, ["CPUExecutionProvider"], args.threads)
        adapter_ms = time_sessions(sessions, x.numpy(), args.repeats)
        # the whole B/16 12x384 model
        model = build_model("vit_b16_adapter12x384").eval()
        clips = torch.randn(args.batch, 3, 8, 224, 224).numpy()
        sessions = {}
        for form in FORMS:
            path = export_onnx(model, tmp / f"model_{form}.onnx", form=form)
            sessions[form] = make_session(path, ["CPUExecutionProvider"], args.threads)
        full_ms = time_sessions(sessions, clips, args.full_repeats)
    print(f"ONNX Runtime CPU, {args.threads} threads, batch {args.batch}, medians")
    print("| form | one adapter (ms) | B/16 12x384 model (ms/batch) |")
    print("|---|---|---|")
    for form in FORMS:
        print(f"| {form} | {adapter_ms[form]:.3f} | {full_ms[form]:.0f} |")
    print(f"conv3d / shift: adapter {adapter_ms['conv3d'] / adapter_ms['shift']:.2f}x, "
          f"model {full_ms['conv3d'] / full_ms['shift']:.3f}x")  # fmt: skip


if __name__ == "__main__":
    main()
