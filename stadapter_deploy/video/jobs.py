"""What a decode worker runs (stadapter_deploy/video/pool.py): the video pipeline and nothing else.

A worker imports only this package: no BentoML, no model, no onnxruntime, no gradio. Two jobs:
- ("clips", video, views): the eval views of one video, as `prepare_eval_views` makes them;
- ("windows", video, views, spec, max_windows, max_seconds): the window batches of a timeline,
  streamed batch by batch (`DecodePool.stream`), each `batch_windows` windows.
Both reply in the hand-over format (handover.py).
"""

from __future__ import annotations

from pathlib import Path

MAX_TIMELINE_WINDOWS_ENV = "STADAPTER_MAX_TIMELINE_WINDOWS"


def decode_worker(preprocessing: dict, batch_clips: int = 8):
    """Runs once in each decode process: cap its memory, one torch thread, then answer decode jobs."""
    import torch

    from ..preprocessing import Preprocessing
    from .limits import limit_process_memory

    limit_process_memory()  # no file, whatever its tricks, can take the machine's memory
    torch.set_num_threads(1)
    pre = Preprocessing.from_dict(preprocessing)

    def decode(kind: str, video, views: int | None, *options):
        if kind == "clips":
            try:
                return eval_clips(video, pre, views)
            except MemoryError:  # the cap above, hit by this file: the same file would hit it again
                raise out_of_memory() from None
        if kind == "windows":
            return window_batches(video, pre, views, *options, batch_clips=batch_clips)
        raise ValueError(f"unknown decode job {kind!r}")

    return decode


def out_of_memory():
    from .limits import MEMORY_ENV, VideoTooLargeError

    return VideoTooLargeError(
        f"decoding it needs more memory than a decode worker may use (set {MEMORY_ENV} to change the cap)"
    )


def eval_clips(video: str | Path, pre, views: int | None) -> dict:
    from .handover import pack
    from .pipeline import prepare_eval_views

    return pack(prepare_eval_views(Path(video) if isinstance(video, str) else video, pre.with_views(views)))


def window_batches(
    video: str | Path,
    pre,
    views: int | None,
    spec=None,
    max_windows: int | None = None,
    max_seconds: float | None = None,
    batch_clips: int = 8,
    seconds_env: str = "STADAPTER_MAX_TASK_SECONDS",
):
    """The packed window batches of `video`, streamed; past `max_windows` windows or `max_seconds` of
    video (set by `seconds_env`) a VideoTooLargeError ends the stream (the windows sent so far stay sent)."""
    from dataclasses import replace

    from .handover import pack
    from .limits import DecodeLimits, VideoTooLargeError
    from .windows import iter_window_batches, timeline_preprocessing

    pre = timeline_preprocessing(pre, views)
    limits = DecodeLimits.from_env()
    if max_seconds is not None and max_seconds < limits.max_duration_s:
        limits = replace(limits, max_duration_s=max_seconds, duration_env=seconds_env)
    source = Path(video) if isinstance(video, str) else video  # an upload's name is never taken for a URL
    windows = 0
    batches = iter_window_batches(source, pre, spec, max(1, batch_clips // pre.views), limits=limits)
    try:
        for batch in batches:
            windows += len(batch.starts)
            if max_windows is not None and windows > max_windows:
                raise VideoTooLargeError(
                    f"the timeline has more than {max_windows} windows, the server's limit for one request (set "
                    f"{MAX_TIMELINE_WINDOWS_ENV}); send a shorter video or a longer stride, or submit it as a "
                    "task (POST /timeline_task/submit)"
                )
            yield pack(batch)
    except MemoryError:
        raise out_of_memory() from None
