"""`stadapter-predict`: argument parsing over stadapter_deploy.predict.

Every failure a user can cause ends in one line and a non-zero exit code, never a traceback:
1 when a video failed (its error line is in the output), 2 for bad arguments or input lists,
130 when interrupted (rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXAMPLES = """
examples:
  stadapter-predict --bundle bundles/synthetic videos/ --out results.jsonl
  stadapter-predict --bundle bundles/synthetic @val.txt --out results.jsonl     # prints top-1/top-5
  stadapter-predict --bundle bundles/synthetic --timeline long.mp4 --window 2 --stride 1 --out timeline.jsonl
  stadapter-predict --bundle bundles/synthetic --timeline rtsp://camera.local/stream
  stadapter-predict --bundle bundles/synthetic archive/ --out results.jsonl --engine ray   # a local Ray cluster
  stadapter-predict --bundle B archive/ --out results.jsonl --engine ray --ray-address HEAD:6379  # a cluster
  stadapter-predict --bundle B archive/ --out results.jsonl --features-out archive.npy   # embeddings
  stadapter-predict --bundle B --similar query.mp4 --index archive.npy --top-k 10         # find alike
  stadapter-predict --bundle B clips/ --explain heatmaps/                                # where it looked
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stadapter-predict",
        description="Classify video files, folders and @list.txt files (one JSON line per video), or label "
        "windows over time with --timeline (files and live streams). With --engine ray, on a Ray cluster.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="video files, folders (searched recursively), "
        "@list.txt (training list format, labels optional), or with --timeline a stream URL",
    )
    p.add_argument("--bundle", type=Path, required=True, help="model bundle directory (stadapter-export)")
    p.add_argument("--out", type=Path, help="JSON lines file; a rerun skips the videos in it (default: stdout)")
    p.add_argument("--top-k", type=int, default=5, help="labels per video or window (default 5)")
    p.add_argument("--views", type=int, help="clips per video (default: the recipe's)")
    p.add_argument("--backend", default="auto", help="auto, torch, onnxruntime, tensorrt, or one with its device")
    p.add_argument(
        "--precision",
        help="fp32, fp16 (CUDA), bf16 (torch on a CPU with BF16) or int8 (onnxruntime, a bundle exported with "
        "--int8); default: the backend's choice for this bundle and machine",
    )
    p.add_argument(
        "--threads",
        type=int,
        help="model CPU threads (default: chosen from the model and the cores, and said on stderr: the threads "
        "that keep up with the decoders, or every core for a model that costs more than decoding)",
    )
    p.add_argument(
        "--workers",
        type=int,
        help="decode processes (default: chosen from the model and the cores, at most 8: one per core for a "
        "cheap model, one for a model that needs the cores); with --engine ray, decode tasks at once "
        "(default: one per CPU of the cluster, fewer for such a model)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        help="clips per model call (default: 8 on a CPU, one video's views for a model that needs the cores; "
        "on a GPU the runner's maximum, else 32)",
    )
    p.add_argument(
        "--decode-timeout",
        type=float,
        default=300.0,
        metavar="S",
        help="seconds one video may take to decode before it becomes an error line (default 300)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    r = p.add_argument_group("engine")
    r.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="'local' (default): this process runs the model and a pool of decode processes; 'ray': a Ray Data "
        "job, decode tasks on CPUs and the model on an actor pool (one per GPU, else one per node), on a local "
        "cluster started and stopped by the command or the one --ray-address names. Needs the ray extra: "
        'pip install -e ".[cpu,ray]"',
    )
    r.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="with --engine ray, the cluster to join, e.g. HEAD:6379 (default: RAY_ADDRESS, else a local cluster); "
        "inputs and the bundle must be at the same paths on every node",
    )
    e = p.add_argument_group("embeddings and explanations")
    e.add_argument("--features", action="store_true", help="add the clip embedding to each line (L2-normalised)")
    e.add_argument(
        "--features-out",
        type=Path,
        metavar="F.npy",
        help="write the embeddings as F.npy (one row per video) and F.json (which video each row is, which model "
        "made them); a rerun adds to it",
    )
    e.add_argument(
        "--explain",
        type=Path,
        metavar="DIR",
        help="draw each video's heatmaps (where its top-1 came from) as DIR/<name>.png",
    )
    e.add_argument(
        "--similar", type=Path, metavar="QUERY", help="print the videos of --index most like QUERY, by cosine"
    )
    e.add_argument("--index", type=Path, metavar="F.npy", help="with --similar: an index written by --features-out")
    t = p.add_argument_group("timeline")
    t.add_argument("--timeline", action="store_true", help="one line per window instead of one per video")
    t.add_argument(
        "--window", type=float, help="window in seconds (default: the recipe's clip span, or 2 s for a uniform recipe)"
    )
    t.add_argument("--stride", type=float, help="seconds between window starts (default: half the window)")
    t.add_argument(
        "--live-policy",
        choices=("drop", "all"),
        default="drop",
        help="live streams: 'drop' (default) labels the newest complete window each time the model is free and "
        "skips the ones it cannot reach in time, so lines stay live; 'all' labels every window in order, "
        "however late (a recording replayed as a stream). Each line has lag_s, its distance to the live edge",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    # Nothing heavy is imported until the decode pool has started: its workers' imports (torch, the video
    # pipeline) then run beside this process's own.
    from stadapter_deploy.predict.options import PredictConfig, early_pool
    from stadapter_deploy.settings import read_settings
    from stadapter_deploy.video.limits import DecodeLimits
    from stadapter_deploy.video.pool import warm_up

    try:
        limits = read_settings(DecodeLimits)
    except ValueError as e:
        print(f"stadapter-predict: error: {e}", file=sys.stderr)
        return 2

    config = PredictConfig(
        bundle=args.bundle,
        inputs=args.inputs,
        out=args.out,
        top_k=args.top_k,
        views=args.views,
        backend=args.backend,
        precision=args.precision,
        threads=args.threads,
        workers=args.workers,
        batch_clips=args.batch_size,
        decode_timeout_s=args.decode_timeout,
        timeline=args.timeline,
        window_s=args.window,
        stride_s=args.stride,
        live_policy=args.live_policy,
        progress=not args.no_progress,
        limits=limits,
        engine=args.engine,
        ray_address=args.ray_address,
        features=args.features,
        features_out=args.features_out,
        explain_dir=args.explain,
        similar=args.similar,
        index=args.index,
    )
    try:
        config.check()
    except ValueError as e:
        print(f"stadapter-predict: error: {e}", file=sys.stderr)
        return 2
    if not args.timeline and args.engine == "local" and args.similar is None:
        warm_up()
    early = early_pool(config)
    from stadapter_deploy.predict.run import EXIT_INTERRUPTED, EXIT_USAGE, Interrupted, run_predict

    try:
        return run_predict(config, early)
    except (ValueError, OSError) as e:  # our error types subclass ValueError; OSError: paths, permissions
        print(f"stadapter-predict: error: {str(e).strip()}", file=sys.stderr)
        return EXIT_USAGE
    except (Interrupted, KeyboardInterrupt) as e:
        done = f" ({e})" if str(e) else ""
        print(f"stadapter-predict: interrupted{done}; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
