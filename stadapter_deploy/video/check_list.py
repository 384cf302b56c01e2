"""Check a video list before training: decode every entry in parallel, write the clean list and a report.

    python -m stadapter_deploy.video.check_list train.txt --root videos/ --num-classes 400 --out train_clean.txt

An entry is kept when its label is an integer in [0, num_classes) and its video decodes at least one
frame (every frame is decoded and counted, within the decode limits: stadapter_deploy/video/limits.py)
within CHECK_TIMEOUT_S. The report (TSV: line, path, reason) lists every dropped entry. Videos are
decoded in the project's decode pool (pool.py): a file that hangs or crashes the decoder costs only
its own entry.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import as_completed
from dataclasses import dataclass
from pathlib import Path

from ..errors import VideoError
from ..progress import progress_bar
from ..settings import read_settings
from .decode import count_decodable_frames
from .limits import DecodeLimits
from .listfile import ListLineError, is_entry, parse_list_line
from .pool import DecodeFailure, DecodePool

CHECK_TIMEOUT_S = 600.0  # one video's full decode


@dataclass(frozen=True)
class CheckJob:
    number: int  # the line's number in the list (from 1)
    line: str
    root: Path
    num_classes: int


@dataclass(frozen=True)
class Checked:
    number: int
    path: str
    reason: str | None  # None: kept


def check_video(path: str, limits: DecodeLimits | None = None) -> str | None:
    """None if at least one frame of the video decodes, else the reason in words."""
    try:
        if count_decodable_frames(path, limits) == 0:
            return "no frame decodes (every packet is damaged or holds no picture)"
    except VideoError as e:
        return str(e)
    except Exception as e:  # a checker reports every failure; it never stops on one
        return f"{type(e).__name__}: {e}"
    return None


def check_worker(limits: DecodeLimits):
    """What each checking process runs: `check_entry` per CheckJob, within the decode limits."""
    from .limits import limit_process_memory

    limit_process_memory(limits)
    return lambda job: check_entry(job, limits)


def check_entry(job: CheckJob, limits: DecodeLimits) -> Checked:
    """A line the list parser refuses is dropped with the parser's words (the same training would stop with)."""
    try:
        path, _ = parse_list_line(job.line, job.num_classes)
    except ListLineError as e:
        return Checked(job.number, e.path, str(e))
    return Checked(job.number, path, check_video(str(job.root / path), limits))


def check_list(
    list_file: Path,
    root: Path,
    num_classes: int,
    out: Path,
    report: Path | None = None,
    workers: int = 4,
    progress: bool = True,
    limits: DecodeLimits | None = None,
) -> tuple[int, int, Path]:
    """Write the kept lines to `out` and the dropped ones to `report`; returns (kept, dropped, report)."""
    lines = list_file.read_text(errors="surrogateescape").splitlines()  # as the one list reader reads it
    jobs = [CheckJob(n, line, root, num_classes) for n, line in enumerate(lines, 1) if is_entry(line)]
    report = report or out.with_name(out.name + ".dropped.tsv")
    results: dict[int, Checked] = {}
    setup = (limits or DecodeLimits(),)
    with DecodePool(check_worker, setup, max(1, workers), CHECK_TIMEOUT_S, name="stadapter-check") as pool:
        pool.start()
        futures = {pool.submit(job): job for job in jobs}
        bar = progress_bar(len(jobs), "checking videos", enabled=progress, unit="video")
        for future in as_completed(futures):
            job = futures[future]
            try:
                checked = future.result()
            except DecodeFailure as e:  # the decoder hung or crashed on this file (the line parsed: it got there)
                checked = Checked(job.number, parse_list_line(job.line, job.num_classes)[0], f"its decode {e}")
            results[checked.number] = checked
            bar.update()
        bar.close()
    kept = [lines[n - 1].strip() + "\n" for n, c in sorted(results.items()) if c.reason is None]
    dropped = [c for _, c in sorted(results.items()) if c.reason is not None]
    out.write_text("".join(kept), errors="surrogateescape")
    rows = ["line\tpath\treason\n"] + [f"{c.number}\t{c.path}\t{c.reason.replace(chr(9), ' ')}\n" for c in dropped]
    report.write_text("".join(rows), errors="surrogateescape")
    return len(kept), len(dropped), report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stadapter_deploy.video.check_list",
        description="Decode every video of a '<path> <label>' list in parallel; write the entries that decode "
        "to a clean list and the dropped ones, with the reason, to a TSV report.",
    )
    parser.add_argument("list_file", type=Path, help="the list to check: '<relative video path> <label>' per line")
    parser.add_argument("--root", type=Path, required=True, help="the folder the list's paths are relative to")
    parser.add_argument("--num-classes", type=int, required=True, help="labels must lie in [0, NUM_CLASSES)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the clean list")
    parser.add_argument(
        "--report", type=Path, default=None, help="where to write the TSV of dropped entries (default: OUT.dropped.tsv)"
    )
    parser.add_argument("--workers", type=int, default=4, help="decoding processes (default: 4)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if not args.list_file.is_file():
        print(f"error: list file not found: {args.list_file}", file=sys.stderr)
        return 2
    if not args.root.is_dir():
        print(f"error: video root is not a folder: {args.root}", file=sys.stderr)
        return 2
    if args.num_classes < 1:
        print("error: --num-classes must be at least 1", file=sys.stderr)
        return 2
    report = args.report or args.out.with_name(args.out.name + ".dropped.tsv")
    for path in (args.out, report):  # before hours of decoding, not after
        if not path.parent.is_dir():
            print(f"error: cannot write {path}: the folder {path.parent} does not exist", file=sys.stderr)
            return 2
    try:
        limits = read_settings(DecodeLimits)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    kept, dropped, report = check_list(
        args.list_file, args.root, args.num_classes, args.out, report, args.workers, not args.quiet, limits
    )
    print(f"{kept} of {kept + dropped} entries kept -> {args.out}; {dropped} dropped -> {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
