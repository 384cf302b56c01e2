"""What a `stadapter-predict` run is asked and what it chooses, before anything heavy loads.

The command line builds a PredictConfig here, and the decode pool starts from a glance at the bundle's
manifest (`early_pool`) while the command goes on to import torch and load the model: nothing in this
module imports torch, onnxruntime or the model.
"""

from __future__ import annotations

import sys
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..hardware import cpu_cores, nvidia_gpu_present
from ..model.config import ModelConfig
from ..preprocessing import DEFAULT_BATCH_CLIPS, Preprocessing
from ..video.jobs import ClipsJob, DecodeSetup, decode_worker
from ..video.limits import DecodeLimits
from ..video.pool import DecodePool
from .defaults import MAX_CPU_WORKERS, Choice, choose, describe
from .inputs import VideoInput, collect_inputs


@dataclass
class PredictConfig:
    bundle: Path
    inputs: list[str]
    out: Path | None = None  # None: lines to stdout, no resume
    top_k: int = 5
    views: int | None = None
    backend: str = "auto"
    device: str | None = None
    precision: str | None = None
    threads: int | None = None  # model threads (default: chosen from the model and the machine, defaults.py)
    workers: int | None = None  # decode processes (the Ray engine: decode tasks at once)
    batch_clips: int | None = None
    decode_timeout_s: float = 300.0  # per video, in the decode pool
    timeline: bool = False
    window_s: float | None = None
    stride_s: float | None = None
    live_policy: str = "drop"  # live streams: "drop" windows the model cannot reach in time, or run "all"
    progress: bool = True
    limits: DecodeLimits = field(default_factory=DecodeLimits)  # the app reads them from its settings
    engine: str = "local"  # "local": this process and its decode pool; "ray": a Ray cluster (ray_engine.py)
    ray_address: str | None = None  # the Ray cluster to join (None: RAY_ADDRESS, else a local one)
    features: bool = False  # each line carries the clip embedding
    features_out: Path | None = None  # the embeddings as F.npy + F.json (runtime/similar.py)
    explain_dir: Path | None = None  # one heatmap PNG per video here
    similar: Path | None = None  # a query video: print the nearest videos of `index` instead
    index: Path | None = None

    def check(self) -> None:
        """The options that do not go together, refused in one line before anything loads."""
        embeds = self.features or self.features_out is not None or self.explain_dir is not None
        if self.timeline and embeds:
            raise ConfigError("--features, --features-out and --explain label whole videos: not with --timeline")
        if self.explain_dir is not None and self.engine != "local":
            raise ConfigError(
                "--explain runs with the local engine (it needs the model's gradients): drop --engine ray"
            )
        if (self.similar is None) != (self.index is None):
            raise ConfigError("--similar QUERY.mp4 and --index F.npy go together")
        if self.similar is not None and (self.inputs or embeds or self.timeline):
            raise ConfigError("--similar QUERY.mp4 --index F.npy takes no other input: it prints the nearest videos")
        if self.similar is None and not self.inputs:
            raise ConfigError("no input given: name video files, folders or @list.txt files (or --similar)")


DEFAULT_DECODE_TIMEOUT_S = 300.0  # one video; a file that hangs the decoder becomes an error line


@dataclass
class BatchOptions:
    top_k: int = 5
    views: int | None = None  # clips per video; None keeps the recipe's
    workers: int | None = None  # decode processes (default: the cores this process may use, at most 8;
    # stadapter-predict chooses from the model and the machine: predict/defaults.py)
    batch_clips: int | None = None  # clips per model call (default: the runner's max batch, else 8)
    ahead: int | None = None  # videos decoding or decoded but not yet run (default: 2 per worker + a batch)
    decode_timeout_s: float = DEFAULT_DECODE_TIMEOUT_S
    limits: DecodeLimits = field(default_factory=DecodeLimits)
    features: bool = False  # each record carries the clip embedding (from the same model call)
    explain_dir: Path | None = None  # draw each video's heatmaps here


def say(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


def peek_bundle(path: Path):
    """(model config, preprocessing) from the manifest, read as plain JSON (no verification, nothing heavy)."""
    import json

    from ..model.config import ModelConfig
    from ..preprocessing import Preprocessing

    manifest = json.loads((Path(path) / "manifest.json").read_text())
    return ModelConfig.from_dict(manifest["config"]), Preprocessing.from_dict(manifest["preprocessing"])


def machine_defaults(
    config: PredictConfig, model: ModelConfig, pre: Preprocessing, device: str, quiet: bool = False
) -> tuple[BatchOptions, int | None]:
    """The batch options and model threads: what the flags say, the rest chosen from the machine
    (predict/defaults.py), said once on stderr."""
    pre = pre.with_views(config.views)
    bound = config.limits.decode_bound_bytes(pre.num_frames * pre.temporal_views, pre.size)
    chosen = choose(model.clip_gflops(pre.num_frames), pre, device, cpu_cores(), decode_bound=bound)
    options = batch_options(config, chosen)
    threads = config.threads or chosen.threads
    if not quiet and not config.timeline and not (config.workers and config.batch_clips and config.threads):
        say(f"stadapter-predict: {describe(chosen)}; flags given: {flags_given(config) or 'none'}")
    return options, threads


@dataclass
class Decoding:
    """A run's decode pool, what it was started for, and the decodes already submitted to it."""

    pool: DecodePool
    options: BatchOptions  # an early pool's guess, checked by the run against its own
    prefetched: dict[str, Future]  # video -> its decode, submitted before the model loaded


def early_pool(config: PredictConfig) -> Decoding | None:
    """The decode pool started from a glance at the manifest, before torch and onnxruntime load here,
    where the model surely runs on the CPU (no NVIDIA GPU, or a CPU backend asked for), with a fresh run's
    first videos already submitted; else None. The run checks the guess once the bundle is loaded, and
    closes the pool if it was wrong or not needed."""
    gpu_asked = any(d in f"{config.backend}-{config.device}" for d in ("cuda", "tensorrt"))
    elsewhere = config.timeline or config.similar is not None or config.engine != "local"
    if elsewhere or gpu_asked or (nvidia_gpu_present() and config.device != "cpu"):
        return None
    try:
        model, pre = peek_bundle(config.bundle)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # load_bundle says what is wrong, in words
    options, _ = machine_defaults(config, model, pre, "cpu", quiet=True)
    pool = decode_pool(pre, options)
    return Decoding(pool, options, prefetch(pool, config, model.num_classes, pre.with_views(config.views), options))


def prefetch(pool: DecodePool, config: PredictConfig, num_classes: int, pre, options: BatchOptions) -> dict:
    """A fresh run's first videos, submitted at once (a resumed run decides its videos later)."""
    if config.out is not None and config.out.exists():
        return {}
    try:
        videos = collect_inputs(config.inputs, num_classes)
    except (ValueError, OSError):
        return {}  # the run says what is wrong, in words
    ahead = lookahead(pool.workers, options.batch_clips or DEFAULT_BATCH_CLIPS, pre.views)
    return {video.video: submit(pool, video) for video in videos[:ahead]}


def lookahead(workers: int, batch_clips: int, views: int) -> int:
    """Videos decoding or decoded but not yet run: two per worker, and a batch."""
    return 2 * workers + max(1, batch_clips // views)


def submit(pool: DecodePool, video: VideoInput) -> Future:
    return pool.submit(ClipsJob(Path(video.video)))  # a Path: never taken for a stream URL


def flags_given(config: PredictConfig) -> str:
    given = {"--workers": config.workers, "--batch-size": config.batch_clips, "--threads": config.threads}
    return ", ".join(f"{flag} {value}" for flag, value in given.items() if value)


def batch_options(config: PredictConfig, chosen: Choice) -> BatchOptions:
    if not config.decode_timeout_s > 0:
        raise ConfigError(f"--decode-timeout must be a positive number of seconds, got {config.decode_timeout_s}")
    return BatchOptions(
        config.top_k,
        config.views,
        config.workers or chosen.workers,
        config.batch_clips or chosen.batch_clips,
        decode_timeout_s=config.decode_timeout_s,
        limits=config.limits,
        features=config.features or config.features_out is not None,
        explain_dir=config.explain_dir,
    )


def decode_pool(preprocessing, options: BatchOptions) -> DecodePool:
    """The pool `classify_videos` needs, started now (each process imports torch: seconds), e.g. while
    the model loads: its processes start in the background and take jobs once ready."""
    pre = preprocessing.with_views(options.views)
    setup = (DecodeSetup(pre, options.limits, DEFAULT_BATCH_CLIPS),)
    pool = DecodePool(
        decode_worker, setup, options.workers or min(cpu_cores(), MAX_CPU_WORKERS), options.decode_timeout_s
    )
    pool.start_in_background()
    return pool
