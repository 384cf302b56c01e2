"""The one hand-over between processes: eval views and window batches as arrays and plain fields.

A decode worker `pack`s what it made; the process that runs the model `unpack`s it back into the same
type. Plain numpy and builtins cross the pipe (no torch tensors, whose pickling depends on torch's
multiprocessing setup), and nobody downstream rebuilds a type by hand.
"""

from __future__ import annotations

import torch

from .pipeline import EvalViews
from .windows import WindowBatch, Windows


def pack(item: EvalViews | WindowBatch) -> dict:
    if isinstance(item, EvalViews):
        return {
            "kind": "views",
            "clips": item.clips.numpy(),  # [V, 3, T, S, S]
            "frame_indices": [[int(i) for i in view] for view in item.frame_indices],
            "num_video_frames": int(item.num_video_frames),
            "timings_ms": {k: float(v) for k, v in item.timings_ms.items()},
        }
    if isinstance(item, WindowBatch):
        return {
            "kind": "windows",
            "clips": item.clips.numpy(),  # [B, V, 3, T, S, S]
            "starts": list(item.starts),
            "frames": [list(f) for f in item.frames],
            "arrived": list(item.arrived),
            "win": (item.win.window, item.win.stride, item.win.fps),
            "live": item.live,
            "window": item.window,
        }
    raise TypeError(f"cannot hand over a {type(item).__name__}")


def unpack(packed: dict) -> EvalViews | WindowBatch:
    clips = torch.from_numpy(packed["clips"])
    if packed["kind"] == "views":
        return EvalViews(clips, packed["frame_indices"], packed["num_video_frames"], packed["timings_ms"])
    if packed["kind"] == "windows":
        win = Windows(*packed["win"])
        return WindowBatch(
            clips, packed["starts"], packed["frames"], packed["arrived"], win, packed["live"], packed["window"]
        )
    raise ValueError(f"unknown hand-over kind {packed['kind']!r}")
