"""stadapter-predict's defaults from the machine: decode workers, clips per model call and model threads.

On a CPU, decoding and inference share the cores, so the cores are split by what a video costs each:
- the model's core-seconds per video, from its FLOPs (known from the config: 303 GFLOP a clip for
  B/16 12x384) at CPU_GFLOPS_PER_CORE;
- a typical decode, DECODE_S_PER_VIDEO of one core (a 10 s 640x360 H.264 video: docs/benchmarks.md).
Decoding gets that share of the cores, as whole decode workers, and the model the rest:
- decode-bound (the tiny model): a worker per core (at most MAX_CPU_WORKERS), the model on the
  threads it needs to keep up (one, for tiny), 8 clips a call;
- model-bound, where decoding needs less than half a core (B/16 on a few cores): the model on every
  core, one video a call, and one decode worker that decodes the next video meanwhile (at the same
  priority: at nice 10 it fell behind the model's threads and made them wait, 8-10% slower here);
- in between (B/16 on many cores): the split, e.g. 3 workers and 57 model threads on 64 cores.

On a GPU the model runs apart from the cores: decode workers on every core (at most MAX_GPU_WORKERS)
feed batches as large as the runner's profile allows.

Either way, no more decode workers than fit in half the machine's memory, each at the most one decode can
take within the decode limits (`DecodeLimits.decode_bound_bytes`: about 1 GB at 4096x4096).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..hardware import cpu_cores, memory_bytes
from ..preprocessing import DEFAULT_BATCH_CLIPS, Preprocessing

CPU_GFLOPS_PER_CORE = 40.0  # fp32 GEMM-bound ViT throughput of one core, AVX2 to AVX-512 (a rough middle)
DECODE_S_PER_VIDEO = 0.4  # one core, a 10 s 640x360 H.264 video, 8 frames converted (bench_video.py)
MAX_CPU_WORKERS = 8  # each imports torch (~0.3 GB resident)
MAX_GPU_WORKERS = 8
MEMORY_SHARE = 0.5  # decode workers x the most one decode takes fit in this share of the memory
GPU_BATCH_CLIPS = 32  # where the runner sets no maximum


@dataclass(frozen=True)
class Choice:
    workers: int  # decode processes
    batch_clips: int  # clips per model call
    threads: int | None  # model CPU threads (None: the runner's own, e.g. on a GPU)
    why: str  # in words, for the one progress line


def choose(
    gflops_per_clip: float,
    pre: Preprocessing,
    device: str,
    cores: int | None = None,
    max_batch: int | None = None,
    decode_bound: int | None = None,
) -> Choice:
    """The defaults for a model of `gflops_per_clip` with preprocessing `pre` (its views) on `device`;
    `decode_bound`: the most memory one decode takes (bytes), which caps the decode workers."""
    chosen = choose_for_cores(gflops_per_clip, pre, device, cores or cpu_cores(), max_batch)
    fit = max(1, int(memory_bytes() * MEMORY_SHARE // decode_bound)) if decode_bound else chosen.workers
    if fit >= chosen.workers:
        return chosen
    why = f"{chosen.why}; {fit} decode worker{'s' * (fit != 1)} at most, to fit in half the memory"
    return Choice(fit, chosen.batch_clips, chosen.threads, why)


def choose_for_cores(gflops_per_clip: float, pre: Preprocessing, device: str, cores: int, max_batch: int | None):
    clips = pre.views
    if device != "cpu":
        workers = min(cores, MAX_GPU_WORKERS)
        batch = max_batch or GPU_BATCH_CLIPS
        why = f"{device}: the model runs apart from the {cores} cores, which all decode"
        return Choice(workers, batch, None, why)
    model_core_s = gflops_per_clip * clips / CPU_GFLOPS_PER_CORE  # one video's model work, in core-seconds
    decoding = cores * DECODE_S_PER_VIDEO / (DECODE_S_PER_VIDEO + model_core_s)  # the cores decoding needs
    costs = f"~{model_core_s:.2g} core-s of model and ~{DECODE_S_PER_VIDEO:g} of decoding a video, {cores} cores"
    if decoding < 0.5:
        why = f"model-bound: {costs}; the model gets every core, one decode worker decodes the next video meanwhile"
        return Choice(1, clips, cores, why)
    workers = max(1, min(round(decoding), cores, MAX_CPU_WORKERS))
    keep_up = math.ceil(workers * model_core_s / DECODE_S_PER_VIDEO)  # model threads that keep up with them
    threads = max(1, min(cores - workers, keep_up))
    batch = max(clips, min(max_batch or DEFAULT_BATCH_CLIPS, DEFAULT_BATCH_CLIPS))
    bound = "decode-bound" if workers == min(cores, MAX_CPU_WORKERS) else "split"
    return Choice(workers, batch, threads, f"{bound}: {costs}; decoding gets {decoding:.1f} of the cores")


def describe(choice: Choice) -> str:
    threads = f"the model on {choice.threads} thread{'s' * (choice.threads != 1)}" if choice.threads else ""
    clips = f"{choice.batch_clips} clip{'s' * (choice.batch_clips != 1)} a call"
    parts = [f"{choice.workers} decode worker{'s' * (choice.workers != 1)}", clips]
    return ", ".join(parts + ([threads] if threads else [])) + f" ({choice.why})"
