"""What a decode worker runs (stadapter_deploy/video/pool.py): the video pipeline and nothing else.

A worker imports only this package: no BentoML, no model, no onnxruntime, no gradio. It is set up once
from a DecodeSetup, then answers two kinds of job:
- ClipsJob: the eval views of one video, as `prepare_eval_views` makes them;
- WindowsJob: the window batches of a timeline, streamed batch by batch (`DecodePool.stream`).
Both reply in the hand-over format (handover.py). A video that goes past a limit raises a VideoError
that says which (its `code` and `limit`); the caller words it for its own users.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import VideoError
from ..preprocessing import DEFAULT_BATCH_CLIPS, Preprocessing
from .limits import DecodeLimits


class TooManyWindowsError(VideoError):
    """A timeline with more windows than its job allows (`limit`)."""

    code = "too_many_windows"

    def __init__(self, limit: int):
        super().__init__(f"the timeline has more than {limit} windows")
        self.limit = limit


@dataclass(frozen=True)
class DecodeSetup:
    """What every worker of a pool is built with."""

    preprocessing: Preprocessing
    limits: DecodeLimits = field(default_factory=DecodeLimits)
    batch_clips: int = DEFAULT_BATCH_CLIPS  # clips per streamed window batch


@dataclass(frozen=True)
class ClipsJob:
    video: Path  # a Path: an upload's name is never taken for a stream URL
    views: int | None = None  # None: the recipe's


@dataclass(frozen=True)
class WindowsJob:
    video: Path
    views: int | None = None
    spec: object = None  # windows.WindowSpec, or None for the recipe's windows
    max_windows: int | None = None  # past it: TooManyWindowsError (the windows sent so far stay sent)
    max_seconds: float | None = None  # a tighter duration limit than the setup's


def decode_worker(setup: DecodeSetup):
    """Runs once in each decode process: cap its memory, one torch thread, then answer decode jobs."""
    import torch

    from .limits import limit_process_memory

    limit_process_memory(setup.limits)  # no file, whatever its tricks, can take the machine's memory
    torch.set_num_threads(1)

    def handle(job: ClipsJob | WindowsJob):
        if isinstance(job, ClipsJob):
            try:
                return eval_clips(job.video, setup.preprocessing, job.views, setup.limits)
            except MemoryError:  # the cap above, hit by this file: the same file would hit it again
                raise setup.limits.out_of_memory() from None
        if isinstance(job, WindowsJob):
            return window_batches(job, setup.preprocessing, setup.limits, setup.batch_clips)
        raise TypeError(f"a decode worker takes a ClipsJob or a WindowsJob, not {type(job).__name__}")

    return handle


def eval_clips(video: Path, pre: Preprocessing, views: int | None, limits: DecodeLimits) -> dict:
    from .handover import pack
    from .pipeline import prepare_eval_views

    return pack(prepare_eval_views(Path(video), pre.with_views(views), limits=limits))


def window_batches(job: WindowsJob, pre: Preprocessing, limits: DecodeLimits, batch_clips: int = DEFAULT_BATCH_CLIPS):
    """The packed window batches of the job's video, streamed; past its windows or seconds a VideoError
    ends the stream (the windows sent so far stay sent)."""
    from .handover import pack
    from .windows import iter_window_batches, timeline_preprocessing

    pre = timeline_preprocessing(pre, job.views)
    if job.max_seconds is not None and job.max_seconds < limits.max_duration_s:
        limits = replace(limits, max_duration_s=job.max_seconds)
    windows = 0
    batches = iter_window_batches(Path(job.video), pre, job.spec, max(1, batch_clips // pre.views), limits=limits)
    try:
        for batch in batches:
            windows += len(batch.starts)
            if job.max_windows is not None and windows > job.max_windows:
                raise TooManyWindowsError(job.max_windows)
            yield pack(batch)
    except MemoryError:
        raise limits.out_of_memory() from None
