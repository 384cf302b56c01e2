"""A whole `stadapter-predict` run: inputs -> resume -> (shard) -> classify or timeline -> lines -> summary."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from ..errors import ConfigError
from ..progress import progress_bar
from ..runtime.timeline import iter_timeline
from ..video.source import is_stream
from ..video.windows import WindowSpec
from .batch import classify_videos, error_record
from .distributed import Rank, barrier, join, leave, merge_parts, part_path, part_paths
from .inputs import VideoInput, collect_inputs
from .options import BatchOptions, Decoding, PredictConfig, decode_pool, early_pool, machine_defaults, say
from .output import ResultWriter, check_out_path, read_results

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class Interrupted(Exception):
    """Ctrl+C during a run over files: the lines written so far stay, and a rerun resumes."""


def previous_records(out: Path | None, rank: Rank, timeline: bool) -> list[dict]:
    """What earlier runs wrote: --out and, under torchrun, every part file (only their owners repair them)."""
    if out is None:
        return []
    records = read_results(out, timeline, repair=rank.is_main)
    for part in part_paths(out):
        records += read_results(part, timeline, repair=part == part_path(out, rank.rank) and rank.distributed)
    return records


def run_predict(config: PredictConfig, early: Decoding | None = None) -> int:
    """Run as the command line asks; returns the exit code. `early`: what `early_pool(config)` started
    (the command line starts it before importing this module); None: started here."""
    try:
        spec = WindowSpec(config.window_s, config.stride_s)
        if config.out is not None:
            check_out_path(config.out)
        early = early or early_pool(config)  # decode workers start now, while this process loads the rest
        return run_loaded(config, spec, early)
    finally:
        if early is not None:
            early.pool.close()  # closing a pool twice is harmless: the run may have closed it already


def run_loaded(config: PredictConfig, spec: WindowSpec, early: Decoding | None) -> int:
    from ..runtime.bundle import load_bundle
    from ..runtime.predictor import load_predictor, plan_predictor

    bundle = load_bundle(config.bundle)
    videos = collect_inputs(config.inputs, len(bundle.labels), streams=config.timeline)
    rank = join()
    decoding = None
    try:
        if rank.distributed and config.out is None:
            raise ConfigError("under torchrun, --out is needed: each rank writes a part file beside it")
        done = {r["video"] for r in previous_records(config.out, rank, config.timeline)}
        mine = [v for v in rank.shard(videos) if v.video not in done or is_stream(v.video)]
        plan = plan_predictor(bundle, config.backend, config.device, config.precision)
        options, threads = machine_defaults(config, bundle.config, bundle.preprocessing, plan.device, rank)
        if mine and not config.timeline:
            matches = early is not None and early.options == options  # never wrong on a CPU-only machine
            decoding = early if matches else Decoding(decode_pool(bundle.preprocessing, options), options, {})
        predictor = load_predictor(bundle, plan=plan, threads=threads, limits=config.limits)
        target = part_path(config.out, rank.rank) if rank.distributed else config.out
        started = time.perf_counter()
        with ResultWriter(target) as writer:
            new = predict_videos(predictor, mine, config, spec, options, writer, rank, decoding)
        seconds = time.perf_counter() - started
        barrier()
        if rank.is_main and config.out is not None:
            merged = merge_parts if rank.distributed else read_results
            records, considered = merged(config.out, config.timeline), videos
        else:
            records, considered = new, mine
        summarize(considered, records, len(videos) - len(mine) if not rank.distributed else None, config)
        say(f"{'rank ' + str(rank.rank) + ': ' if rank.distributed else ''}{len(mine)} videos in {seconds:.1f} s")
        failed = {r["video"] for r in records if "error" in r} & {v.video for v in considered}
        return EXIT_FAILED if failed else EXIT_OK
    finally:
        if decoding is not None:
            decoding.pool.close()
        leave()


def predict_videos(
    predictor,
    videos: list[VideoInput],
    config: PredictConfig,
    spec: WindowSpec,
    options: BatchOptions,
    writer,
    rank: Rank,
    decoding: Decoding | None,
) -> list[dict]:
    desc = f"rank {rank.rank}" if rank.distributed else "predict"
    bar = progress_bar(len(videos), desc, enabled=config.progress, unit="video")
    records = []
    try:
        results = (
            timeline_records(predictor, videos, config, spec)
            if config.timeline
            else classify_records(predictor, videos, options, decoding)
        )
        for lines in results:
            writer.write(lines)
            records += lines
            if "error" in lines[0]:
                say(f"stadapter-predict: {lines[0]['video']}: {lines[0]['error']}")
            if "latency_ms" not in lines[0]:  # a video done (a stream's windows are not)
                bar.update()
    except KeyboardInterrupt:
        raise Interrupted(f"{len(records)} lines written") from None
    finally:
        bar.close()
    return records


def classify_records(predictor, videos: list[VideoInput], options: BatchOptions, decoding: Decoding | None):
    if not videos:  # e.g. a rank whose shard is all done: no pool was started
        return
    for record in classify_videos(predictor, videos, options, decoding.pool, decoding.prefetched):
        yield [record]


def timeline_records(predictor, videos: list[VideoInput], config: PredictConfig, spec: WindowSpec):
    """A file's window lines all at once (each with `windows`, so resume can tell a whole video); a
    stream's line by line as each window completes, until the stream ends or Ctrl+C."""
    args = (spec, config.top_k, config.views)
    live_args = (*args, None, config.live_policy)
    for video in videos:
        name = video.video
        try:
            if is_stream(name):
                yield from stream_records(predictor, name, live_args)
                continue
            segments = [s.to_dict() for s in iter_timeline(predictor, Path(name), *args)]
        except Exception as e:
            yield [error_record(name, e)]
            continue
        n = len(segments)
        yield [{"video": name, **s, "window": i, "windows": n} for i, s in enumerate(segments)]


def stream_records(predictor, url: str, args: tuple):
    """A stream's lines as its windows are labelled, then one line of what the stream cost: windows
    labelled and skipped, how far behind the live edge they were (lag_s) and the model's time."""
    lags, latencies, skipped = [], [], 0
    try:
        for segment in iter_timeline(predictor, url, *args):
            lags.append(segment.lag_s)
            latencies.append(segment.latency_ms)
            skipped += segment.skipped or 0
            yield [{"video": url, **segment.to_dict()}]
    except KeyboardInterrupt:
        say(f"stadapter-predict: stopped {url} (Ctrl+C)")
    if lags:
        say(
            f"{url}: {len(lags)} windows labelled, {skipped} skipped (--live-policy {args[-1]}); lag behind the "
            f"live edge: median {statistics.median(lags):.2f} s, max {max(lags):.2f} s; latency from a window's "
            f"last frame to its line: median {statistics.median(latencies):.0f} ms, max {max(latencies):.0f} ms"
        )


def summarize(videos: list[VideoInput], records: list[dict], skipped: int | None, config: PredictConfig) -> None:
    names = {v.video for v in videos}
    failed = {r["video"] for r in records if "error" in r and r["video"] in names}
    line = f"{len(videos)} videos, {len(failed)} failed"
    if skipped:
        line += f", {skipped} already in {config.out} (skipped)"
    say(line)
    if not config.timeline:
        report = accuracy(videos, records, config.top_k)
        if report:
            say(report)


def accuracy(videos: list[VideoInput], records: list[dict], top_k: int) -> str | None:
    """Top-1 and top-5 accuracy over the labeled videos that were classified."""
    results = {r["video"]: r for r in records if "labels" in r}
    scored = [(v.label, results[v.video]["labels"]) for v in videos if v.label is not None and v.video in results]
    if not scored:
        return None
    top1 = sum(labels[0]["index"] == label for label, labels in scored) / len(scored)
    top5 = sum(label in [x["index"] for x in labels[:5]] for label, labels in scored) / len(scored)
    unscored = sum(v.label is not None for v in videos) - len(scored)
    text = f"accuracy over {len(scored)} labeled videos: top-1 {100 * top1:.1f}%, top-5 {100 * top5:.1f}%"
    if top_k < 5:
        text += f" (top-5 from the {top_k} labels asked for)"
    return text + (f"; {unscored} labeled videos failed and are not counted" if unscored else "")
