"""What a decode worker process runs: the video pipeline and the preprocessing, nothing else.

Kept apart from serve/service.py so that a worker process imports neither BentoML, the bundle's
model, onnxruntime nor gradio: only the video pipeline.
"""

from __future__ import annotations

MAX_TIMELINE_WINDOWS_ENV = "STADAPTER_MAX_TIMELINE_WINDOWS"


def make_decoder(preprocessing: dict, max_timeline_windows: int):
    """Runs once in each decode process: cap its memory, one torch thread, then decode jobs:
    ("clips", path, views) for /classify and ("timeline", path, views, window_s, stride_s) for
    /classify_timeline."""
    import torch

    from stadapter_deploy.preprocessing import Preprocessing
    from stadapter_deploy.video.limits import MEMORY_ENV, VideoTooLargeError, limit_process_memory

    limit_process_memory()  # no file, whatever its tricks, can take the machine's memory
    torch.set_num_threads(1)
    pre = Preprocessing.from_dict(preprocessing)
    jobs = {"clips": eval_clips, "timeline": timeline_clips}

    def decode(kind: str, path: str, views: int | None, *options) -> dict:
        try:
            return jobs[kind](path, pre, views, *options, max_windows=max_timeline_windows)
        except MemoryError:  # the cap above, hit by this file: the same file would hit it again
            raise VideoTooLargeError(
                f"decoding it needs more memory than a decode worker may use (set {MEMORY_ENV} to change the cap)"
            ) from None

    return decode


def eval_clips(path: str, pre, views: int | None, max_windows: int) -> dict:
    from stadapter_deploy.video import prepare_eval_views

    ev = prepare_eval_views(path, pre.with_views(views))
    return {
        "clips": ev.clips.numpy(),  # [V, 3, T, S, S]
        "frame_indices": ev.frame_indices,
        "timings_ms": {k: float(v) for k, v in ev.timings_ms.items()},
    }


def timeline_clips(path: str, pre, views: int | None, window_s, stride_s, max_windows: int) -> dict:
    """Every window's clips [W * V, 3, T, S, S] from one sequential decode, with where each came from."""
    import time
    from pathlib import Path

    import torch

    from stadapter_deploy.predict.timeline import iter_window_batches, timeline_preprocessing
    from stadapter_deploy.video.limits import VideoTooLargeError

    start = time.perf_counter()
    pre = timeline_preprocessing(pre, views)
    data = Path(path).read_bytes()  # bytes, so the upload's name can never be taken for a URL
    batches = []
    for batch in iter_window_batches(data, pre, window_s, stride_s, batch_windows=max_windows + 1):
        batches.append(batch)
        if sum(len(b.starts) for b in batches) > max_windows:
            raise VideoTooLargeError(
                f"the timeline has more than {max_windows} windows, the server's limit (set "
                f"{MAX_TIMELINE_WINDOWS_ENV}); send a shorter video, a longer stride, or use stadapter-predict"
            )
    return {
        "clips": torch.cat([b.clips.flatten(0, 1) for b in batches]).numpy(),  # [W * V, 3, T, S, S]
        "views": pre.views,
        "windows": [
            {"start_s": start_s, "end_s": end_s, "frames": frames}
            for b in batches
            for (start_s, end_s), frames in zip(b.times(), b.frames, strict=True)
        ],
        "timings_ms": {"decode": (time.perf_counter() - start) * 1e3},
    }
