"""`stadapter-predict --engine ray`: the local engine's videos, options and lines, on a Ray cluster (Ray Data).

The job is a Ray Data pipeline; this process (the driver) writes what comes out of it:
1. the videos to do (listed and resumed by run.py, as for the local engine), in blocks of a few videos
   (blocks_for): enough blocks that Ray hands them to whichever decoder is free up to the end, few
   enough that a task's own cost (tens of ms) stays small beside its decoding;
2. decode, Ray tasks of one CPU each: the local engine's decode job ("clips", video/jobs.py) in a
   one-process decode pool that lives as long as its Ray worker, so the same limits, per-video timeout,
   one retry after a crash and error lines (batch.error_record) hold. What goes on is the model-ready
   clips in the hand-over format (video/handover.py), never frames;
3. the model, an actor pool: one actor per GPU where the cluster has GPUs, else one CPU actor per node
   on the threads the local engine would give the model there (defaults.py). Each runs the local
   engine's model call (batch.run_batch), so a line is built by runtime.results as there.

Nothing lost, nothing twice: a bad video becomes its error line in the decode stage, so no block fails
for a video's sake; Ray retries tasks and restarts actors lost with a worker or a node (a CPU model
actor holds no CPU in Ray's accounting, so it restarts on any node left); the driver writes each video
once. A block that fails past Ray's retries is skipped (max_errored_blocks), and run.py names its
videos: they have no line, so a rerun tries them again.

Without --ray-address or RAY_ADDRESS, a local cluster starts here and stops with the command, on every
path (Ctrl+C, SIGTERM; its processes die with this one on a SIGKILL, by Ray's fate sharing).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..hardware import cpu_cores
from ..preprocessing import Preprocessing
from ..video.limits import DecodeLimits
from ..video.pool import DecodePool
from .defaults import choose
from .inputs import VideoInput
from .options import BatchOptions, PredictConfig, decode_pool, say, submit

INSTALL = 'pip install -e ".[cpu,ray]" (or ".[gpu,ray]")'
MAX_VIDEOS_PER_BLOCK = 8  # a decode task's output (views of each) stays small
BLOCKS_PER_CPU = 8  # at least, where there are videos enough: the last ones end together


# ----------------------------------------------------------------------------- the cluster


@dataclass(frozen=True)
class Cluster:
    local: bool  # started by this command (and stopped with it)
    log: Path  # where this process's own Ray log lines go
    start_s: float  # starting or joining it took


@contextmanager
def ray_cluster(address: str | None) -> Iterator[Cluster]:
    """Join the cluster at `address` (else RAY_ADDRESS), or start a local one for this command. Ray's own
    log lines stay in its session folder: stderr carries ours only."""
    try:
        import ray
        import ray.data  # noqa: F401  (the `data` extra: pyarrow, pandas)
    except ImportError as e:
        raise ConfigError(f"--engine ray needs Ray ({e.name} is missing): {INSTALL}") from None
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is not None:
        check_reachable(address)
    options = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    started = time.perf_counter()
    try:
        try:
            if address is None:  # "local": a new cluster, never one that `ray start` left running here
                context = ray.init(address="local", num_cpus=cpu_cores(), **options)
            else:
                context = ray.init(address=address, **options)
        except (ConnectionError, ValueError, RuntimeError) as e:
            where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
            raise ConfigError(f"cannot start or join {where}: {str(e).strip().splitlines()[0]}") from None
        log = Path(context.address_info["session_dir"]) / "logs" / f"stadapter-predict-{os.getpid()}.err"
        with native_stderr_to(log), cluster_reports_to(log):
            try:
                yield Cluster(address is None, log, time.perf_counter() - started)
            finally:
                ray.shutdown()  # still redirected: what Ray says on the way out goes to the log too
    finally:
        ray.shutdown()  # a local cluster stops (a second call does nothing); a joined one is only left


def check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """A cluster address that nothing answers on: one line now (ray.init would retry it without end)."""
    import socket

    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # Ray Client (ray://), "auto" and the like: ray.init says what is wrong with them
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ConfigError(
            f"cannot reach the Ray cluster at {address} ({e.strerror or e}); start it there with "
            f"`ray start --head --port {port}`, or leave out --ray-address and RAY_ADDRESS for a local one"
        ) from None


@contextmanager
def native_stderr_to(path: Path):
    """Ray's C++ side writes log lines and advice of its own to this process's stderr (file descriptor 2),
    e.g. at ERROR on every actor pool: they go to `path`. Python's sys.stderr, where our lines and the
    progress bar go, keeps the terminal."""
    sys.stderr.flush()
    terminal = os.dup(2)
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(log, 2)
    os.close(log)
    own = sys.stderr
    if own_fd(own) == 2:  # else a test's capture, which is not descriptor 2: left as it is
        sys.stderr = open(terminal, "w", buffering=1, errors="backslashreplace", closefd=False)
    try:
        yield
    finally:
        sys.stderr.flush()
        sys.stderr = own
        os.dup2(terminal, 2)
        os.close(terminal)


@contextmanager
def cluster_reports_to(path: Path):
    """Ray's driver prints what the cluster reports to it (a task retried, an actor died) on stdout, whatever
    log_to_driver says, where our lines go without --out: into the log instead. Ray has no switch for it, so
    its printer (ray._private.worker.print_to_stdstream, looked up at each call) is replaced meanwhile;
    tests/test_predict_ray.py checks that a failing job leaves stdout and stderr to us."""
    import ray._private.worker as ray_worker

    printer = ray_worker.print_to_stdstream

    def to_log(data: dict, ignore_prefix: bool) -> None:
        with open(path, "a") as log:
            log.writelines(f"({data.get('pid', 'ray')}) {line}\n" for line in data.get("lines", []))

    ray_worker.print_to_stdstream = to_log
    try:
        yield
    finally:
        ray_worker.print_to_stdstream = printer


def own_fd(stream) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def data_context():
    """Ray Data as this job needs it: a failed block is skipped, not the job's end (bad videos are lines
    of their own before that), and no progress of Ray's own (the command has its bar)."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.max_errored_blocks = -1
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    return context


# ----------------------------------------------------------------------------- where the stages run


@dataclass(frozen=True)
class Layout:
    """Where the stages run: from the cluster's nodes and the local engine's rule (defaults.py)."""

    nodes: int
    cpus: int
    gpus: int  # used by the model (0: the model runs on CPUs)
    model_actors: int
    videos_per_call: int  # rows per model call: clips a call / views
    decode_tasks: int | None  # at once across the cluster (None: one per CPU)

    def describe(self, local: bool) -> str:
        cluster = f"{'a local cluster of ' if local else ''}{self.cpus} CPUs"
        cluster += f" and {self.gpus} GPUs" if self.gpus else ""
        cluster += f" on {self.nodes} node{'s' * (self.nodes != 1)}"
        decode = f"at most {self.decode_tasks} at once" if self.decode_tasks else "one per CPU"
        model = f"{self.model_actors} model actor{'s' * (self.model_actors != 1)}"
        model += " (one per GPU)" if self.gpus else " on CPUs (one per node, threads from its cores)"
        return f"ray: {cluster}; decode tasks {decode}; {model}, {self.videos_per_call} videos a call"


def cpu_only(config: PredictConfig) -> bool:
    return config.device == "cpu" or config.backend.endswith("-cpu")


def plan_layout(config: PredictConfig, gflops_per_clip: float, pre: Preprocessing, nodes: list[dict]) -> Layout:
    """The layout for the alive `nodes` (ray.nodes()' Resources of each)."""
    cores = [int(n.get("CPU", 0)) for n in nodes if n.get("CPU", 0) >= 1]
    if not cores:
        raise ConfigError("the Ray cluster has no node with a CPU: the decode stage needs one")
    gpus = 0 if cpu_only(config) else int(sum(n.get("GPU", 0) for n in nodes))
    if gpus:
        chosen = choose(gflops_per_clip, pre, "cuda", min(cores))
        actors, decode_tasks = gpus, config.workers
    else:
        per_node = [choose(gflops_per_clip, pre, "cpu", c) for c in cores]
        chosen, actors = per_node[0], len(cores)
        # As on one machine: the decoders a node's split gives it (one, where the model needs the cores).
        decode_tasks = config.workers or sum(c.workers for c in per_node)
        decode_tasks = None if decode_tasks >= sum(cores) else decode_tasks
    batch_clips = config.batch_clips or chosen.batch_clips
    return Layout(len(nodes), sum(cores), gpus, actors, max(1, batch_clips // pre.views), decode_tasks)


# ----------------------------------------------------------------------------- stage 2: decode

_POOLS: dict[tuple, DecodePool] = {}  # this Ray worker's decode pool, kept from one task to the next


def worker_pool(preprocessing: dict, timeout_s: float, limits: DecodeLimits) -> DecodePool:
    key = (json.dumps(preprocessing, sort_keys=True), timeout_s, limits)
    if key not in _POOLS:  # its process exits with this worker (the pool's watchdog)
        options = BatchOptions(workers=1, decode_timeout_s=timeout_s, limits=limits)
        _POOLS[key] = decode_pool(Preprocessing.from_dict(preprocessing), options)
    return _POOLS[key]


def decode_stage(
    batch: dict[str, np.ndarray], preprocessing: dict, timeout_s: float, limits: DecodeLimits
) -> dict[str, list]:
    """A Ray task: the videos of `batch` through the decode job. Each row: `views`, the hand-over
    pickled as the decode pool's pipe carries it (b"" on failure), and `failure`, the video's error
    line as JSON ("" when decoded)."""
    pool = worker_pool(preprocessing, timeout_s, limits)
    videos = [str(v) for v in batch["video"]]
    futures = [submit(pool, VideoInput(v)) for v in videos]
    rows = [decoded(video, future) for video, future in zip(videos, futures, strict=True)]
    return {"video": videos, "views": [views for views, _ in rows], "failure": [failure for _, failure in rows]}


def decoded(video: str, future) -> tuple[bytes, str]:
    """(the pickled hand-over, "") or (b"", the error line), as the local engine's take_batch makes it (the
    pool's door has already run a decode that crashed its process once more)."""
    try:
        return pickle.dumps(future.result(), protocol=5), ""
    except Exception as e:
        from .batch import error_record  # imports torch: only on a failure

        return b"", json.dumps(error_record(video, e))


# ----------------------------------------------------------------------------- stage 3: the model


@dataclass(frozen=True)
class ModelSettings:
    bundle: str
    backend: str
    device: str | None
    precision: str | None
    threads: int | None  # None: on a CPU, the local engine's choice for this node's cores
    top_k: int
    gflops_per_clip: float
    preprocessing: dict  # with the run's views
    features: bool  # each line with the clip embedding


class ModelStage:
    """A Ray actor: one Predictor (on the GPU Ray gave it, or on this node's CPUs), one call a batch."""

    def __init__(self, settings: ModelSettings):
        from ..runtime.bundle import load_bundle
        from ..runtime.predictor import load_predictor, plan_predictor

        bundle = load_bundle(settings.bundle)
        plan = plan_predictor(bundle, settings.backend, settings.device, settings.precision)
        threads = settings.threads
        if threads is None and plan.device == "cpu":
            pre = Preprocessing.from_dict(settings.preprocessing)
            threads = choose(settings.gflops_per_clip, pre, "cpu", cpu_cores()).threads
        self.predictor = load_predictor(bundle, plan=plan, threads=threads)
        self.options = BatchOptions(top_k=settings.top_k, features=settings.features)
        if settings.features:
            self.predictor.check_features()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        from ..video.handover import unpack
        from .batch import run_batch

        lines = {str(v): str(f) for v, f in zip(batch["video"], batch["failure"], strict=True) if f}
        ready = [
            (VideoInput(str(v)), unpack(pickle.loads(views)))
            for v, views, f in zip(batch["video"], batch["views"], batch["failure"], strict=True)
            if not f
        ]
        if ready:
            lines |= {r["video"]: json.dumps(r) for r in run_batch(self.predictor, ready, self.options)}
        videos = [str(v) for v in batch["video"]]
        return {"video": videos, "line": [lines[v] for v in videos]}


# ----------------------------------------------------------------------------- the job


def blocks_for(videos: int, cpus: int) -> int:
    """Blocks of about videos / (BLOCKS_PER_CPU x cpus) videos each, one to MAX_VIDEOS_PER_BLOCK."""
    per_block = min(MAX_VIDEOS_PER_BLOCK, max(1, videos // (BLOCKS_PER_CPU * cpus)))
    return -(-videos // per_block)


def ray_records(cluster: Cluster, bundle, videos: list[VideoInput], config: PredictConfig) -> Iterator[list[dict]]:
    """Each video's line (as a one-line list, like the local engine's) as the cluster finishes it."""
    import ray
    import ray.data

    started = time.perf_counter()
    data_context()
    pre = bundle.preprocessing.with_views(config.views)
    gflops = bundle.config.clip_gflops(pre.num_frames)
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    layout = plan_layout(config, gflops, pre, nodes)
    say(f"stadapter-predict: {layout.describe(cluster.local)}")
    settings = ModelSettings(
        str(bundle.path.resolve()),
        config.backend,
        config.device,
        config.precision,
        config.threads,
        config.top_k,
        gflops,
        pre.to_dict(),
        config.features or config.features_out is not None,
    )
    rows = [{"video": v.video} for v in videos]
    decode_compute = ray.data.TaskPoolStrategy(size=layout.decode_tasks) if layout.decode_tasks else None
    dataset = (
        ray.data.from_items(rows, override_num_blocks=blocks_for(len(rows), layout.cpus))
        .map_batches(
            decode_stage,
            batch_size=None,  # a block's videos, in one task
            fn_kwargs={"preprocessing": pre.to_dict(), "timeout_s": config.decode_timeout_s, "limits": config.limits},
            num_cpus=1,
            compute=decode_compute,
        )
        .map_batches(
            ModelStage,
            batch_size=layout.videos_per_call,
            fn_constructor_kwargs={"settings": settings},
            compute=ray.data.ActorPoolStrategy(size=layout.model_actors),
            **({"num_gpus": 1} if layout.gpus else {"num_cpus": 0}),
        )
    )
    written, first = set(), None
    try:
        for video, line in finished(dataset):
            if video in written:  # a block done twice (a retry after its first output arrived)
                continue
            written.add(video)
            first = first or time.perf_counter()
            yield [json.loads(line)]
    except Exception as e:  # the job itself failed, e.g. no model actor could start
        raise ConfigError(f"the Ray job failed: {job_error(e)}") from None
    if first is not None:  # where the time went, for a user (and benchmarks/bench_predict.py)
        first_s, rest_s = first - started, time.perf_counter() - first
        say(
            f"ray: the cluster took {cluster.start_s:.1f} s to {'start' if cluster.local else 'join'}, the first "
            f"line {first_s:.1f} s more (actors starting, a decode), the rest {rest_s:.1f} s"
        )


def finished(dataset) -> Iterator[tuple[str, str]]:
    """(video, line) for each row of the model stage's blocks as each block arrives. Without prefetching:
    iter_rows' default holds a block back until the next one is ready (the first lines came a model
    call, ~1.8 s, late on 2 cores)."""
    for batch in dataset.iter_batches(batch_size=None, prefetch_batches=0, batch_format="numpy"):
        yield from zip(map(str, batch["video"]), map(str, batch["line"]), strict=True)


def job_error(e: BaseException) -> str:
    """What failed in a stage, in the words of our code (e.g. the model actor's ValueError), not Ray's
    wrappers: the first exception outside Ray in the chain (causes, and the errors a Ray error carries)."""
    from .batch import error_message

    todo, seen = [e], set()
    while todo:
        error = todo.pop(0)
        if id(error) in seen:
            continue
        seen.add(id(error))
        if not type(error).__module__.startswith("ray."):
            return error_message(error).splitlines()[0]
        todo += [
            x for x in (getattr(error, "cause", None), error.__cause__, *error.args) if isinstance(x, BaseException)
        ]
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
