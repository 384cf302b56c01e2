"""A whole `stadapter-predict` run: inputs -> resume -> classify (the local or the Ray engine) or timeline ->
lines -> summary.

What runs the model (the batch loop, timelines, the Predictor) is imported where it is used: the Ray
engine's driver only writes lines, and never loads torch (~1.5 s before its cluster starts, on 2 cores).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..progress import progress_bar
from .inputs import VideoInput, collect_inputs
from .options import BatchOptions, Decoding, PredictConfig, decode_pool, early_pool, machine_defaults, say
from .output import FeatureRows, ResultWriter, check_out_path, read_results

if TYPE_CHECKING:
    from ..video.windows import WindowSpec

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
ENGINES = ("local", "ray")


class Interrupted(Exception):
    """Ctrl+C during a run over files: the lines written so far stay, and a rerun resumes."""


def run_predict(config: PredictConfig, early: Decoding | None = None) -> int:
    """Run as the command line asks; returns the exit code. `early`: what `early_pool(config)` started
    (the command line starts it before importing this module); None: started here."""
    try:
        spec = window_spec(config)
        if config.engine not in ENGINES:
            raise ConfigError(f"unknown --engine {config.engine!r}; choose one of {', '.join(ENGINES)}")
        if config.engine == "ray" and config.timeline:
            raise ConfigError("--engine ray labels files, one line each; --timeline runs on the local engine")
        if config.out is not None:
            check_out_path(config.out)
        early = early or early_pool(config)  # decode workers start now, while this process loads the rest
        return run_loaded(config, spec, early)
    finally:
        if early is not None:
            early.pool.close()  # closing a pool twice is harmless: the run may have closed it already


def window_spec(config: PredictConfig) -> WindowSpec | None:
    """--window and --stride, checked; None where neither a timeline nor either of them was asked for."""
    if not config.timeline and config.window_s is None and config.stride_s is None:
        return None
    from ..video.windows import WindowSpec

    return WindowSpec(config.window_s, config.stride_s)


def run_loaded(config: PredictConfig, spec: WindowSpec | None, early: Decoding | None) -> int:
    from ..runtime.bundle import load_bundle

    bundle = load_bundle(config.bundle)
    if config.similar is not None:
        return print_similar(bundle, config)
    videos = collect_inputs(config.inputs, len(bundle.labels), streams=config.timeline)
    done = {r["video"] for r in read_results(config.out, config.timeline)} if config.out is not None else set()
    rows = feature_rows(bundle, config)
    embedded = rows.done() if rows is not None else None  # a video done without its row is done again
    todo = [v for v in videos if v.video not in done or v.stream or (embedded is not None and v.video not in embedded)]
    started = time.perf_counter()
    if config.explain_dir is not None:
        config.explain_dir.mkdir(parents=True, exist_ok=True)
    if config.engine == "ray":
        new = predict_on_ray(bundle, todo, config, Lines(config, done, rows))
    else:
        new = predict_locally(bundle, todo, config, spec, early, Lines(config, done, rows))
    if rows is not None:
        say(f"stadapter-predict: {rows.finish()} embeddings in {rows.path} (and {rows.path.with_suffix('.json').name})")
    seconds = time.perf_counter() - started
    records = read_results(config.out, config.timeline) if config.out is not None else new
    summarize(videos, records, len(videos) - len(todo), config)
    missing = {v.video for v in todo} - {r["video"] for r in new}
    if missing and not config.timeline:  # a Ray block that failed past its retries (never the local engine)
        say(
            f"stadapter-predict: {len(missing)} videos got no line (Ray gave up on them; its logs say why), e.g. "
            f"{sorted(missing)[0]}; rerun the same command to try them again"
        )
    say(f"{len(todo)} videos in {seconds:.1f} s")
    failed = {r["video"] for r in records if "error" in r} & {v.video for v in videos}
    return EXIT_FAILED if failed or missing else EXIT_OK


def predict_on_ray(bundle, videos: list[VideoInput], config: PredictConfig, lines: Lines) -> list[dict]:
    """The Ray engine (ray_engine.py): a cluster joined or started for the job, its lines written here."""
    if not videos:
        return []
    from .ray_engine import ray_cluster, ray_records

    with ray_cluster(config.ray_address) as cluster:
        return write_records(ray_records(cluster, bundle, videos, config), config, len(videos), lines)


def predict_locally(
    bundle, videos: list[VideoInput], config: PredictConfig, spec: WindowSpec | None, early, lines: Lines
) -> list[dict]:
    """The local engine: this process runs the model, its decode pool the decoding."""
    from ..runtime.predictor import load_predictor, plan_predictor

    plan = plan_predictor(bundle, config.backend, config.device, config.precision)
    options, threads = machine_defaults(config, bundle.config, bundle.preprocessing, plan.device)
    decoding = None
    try:
        if videos and not config.timeline:
            matches = early is not None and early.options == options  # never wrong on a CPU-only machine
            decoding = early if matches else Decoding(decode_pool(bundle.preprocessing, options), options, {})
        predictor = load_predictor(bundle, plan=plan, threads=threads, limits=config.limits)
        say(f"stadapter-predict: {predictor.backend} {predictor.precision} ({plan.selection})")
        if options.features:
            predictor.check_features()  # a bundle exported before embeddings: one line, before any work
        results = (
            timeline_records(predictor, videos, config, spec)
            if config.timeline
            else classify_records(predictor, videos, options, decoding)
        )
        return write_records(results, config, len(videos), lines)
    finally:
        if decoding is not None:
            decoding.pool.close()


@dataclass
class Lines:
    """What becomes of a video's records: its embedding goes to --features-out first (when asked), then its
    lines to --out, without the embedding unless --features asked for it, and not again for a video that
    has its lines already (done again only for its embedding)."""

    config: PredictConfig
    written: set[str]  # the videos --out holds lines of
    rows: FeatureRows | None

    def store(self, writer: ResultWriter, records: list[dict]) -> None:
        if self.rows is not None:
            for record in records:
                if "features" in record:
                    self.rows.add(record["video"], record["features"])
        if not self.config.features:
            records = [{k: v for k, v in r.items() if k != "features"} for r in records]
        writer.write([r for r in records if r["video"] not in self.written])


def feature_rows(bundle, config: PredictConfig) -> FeatureRows | None:
    if config.features_out is None:
        return None
    from ..runtime.similar import model_id

    return FeatureRows(config.features_out, model_id(bundle), bundle.config.width)


def print_similar(bundle, config: PredictConfig) -> int:
    """--similar QUERY --index F.npy: the nearest videos of the index, one JSON line each, best first."""
    from ..runtime.predictor import load_predictor
    from ..runtime.similar import FeatureIndex, model_id

    index = FeatureIndex.load(config.index)
    index.check_model(model_id(bundle))
    predictor = load_predictor(bundle, config.backend, config.device, config.precision, limits=config.limits)
    query = predictor.embed(config.similar, config.views)
    with ResultWriter(config.out) as writer:
        writer.write([{"query": str(config.similar), **m.to_dict()} for m in index.nearest(query, config.top_k)])
    return EXIT_OK


def write_records(results, config: PredictConfig, total: int, lines: Lines | None = None) -> list[dict]:
    """Write each video's lines to --out (or stdout) as they come (`results` yields a list of lines per video
    or stream window), with one progress bar over the videos; Ctrl+C keeps what is written (Interrupted)."""
    writer = ResultWriter(config.out)
    lines = lines or Lines(config, set(), None)
    bar = progress_bar(total, "predict", enabled=config.progress, unit="video")
    records = []
    try:
        for produced in results:
            lines.store(writer, produced)
            records += produced
            if "error" in produced[0]:
                say(f"stadapter-predict: {produced[0]['video']}: {produced[0]['error']}")
            if "latency_ms" not in produced[0]:  # a video done (a stream's windows are not)
                bar.update()
    except KeyboardInterrupt:
        raise Interrupted(f"{len(records)} lines written") from None
    finally:
        bar.close()
        writer.close()
        if hasattr(results, "close"):
            results.close()  # a generator's own cleanup now (the Ray engine stops its cluster)
    return records


def classify_records(predictor, videos: list[VideoInput], options: BatchOptions, decoding: Decoding | None):
    from .batch import classify_videos

    if not videos:  # all done already: no pool was started
        return
    for record in classify_videos(predictor, videos, options, decoding.pool, decoding.prefetched):
        yield [record]


def timeline_records(predictor, videos: list[VideoInput], config: PredictConfig, spec: WindowSpec):
    """A file's window lines all at once (each with `windows`, so resume can tell a whole video); a
    stream's line by line as each window completes, until the stream ends or Ctrl+C."""
    from ..runtime.timeline import iter_timeline
    from .batch import error_record

    args = (spec, config.top_k, config.views)
    live_args = (*args, None, config.live_policy)
    for video in videos:
        name = video.video
        try:
            if video.stream:
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
    from ..runtime.timeline import iter_timeline

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
