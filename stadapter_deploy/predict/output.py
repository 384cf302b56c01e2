"""Result files: one JSON line per video (or per timeline window), flushed as written, resumable.

A crash can leave a torn last line (no newline): reading the file drops it. In a timeline file every
window line of a video carries `windows`, the video's window count; a video with fewer lines than
that was cut off by a crash, and its lines are dropped so the video runs again.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..errors import ConfigError


def parse_lines(path: Path, data: bytes) -> list[dict]:
    records = []
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or "video" not in record:
            raise ConfigError(f"{path}:{number}: not a result line of stadapter-predict; choose another --out")
        records.append(record)
    return records


def check_kind(path: Path, records: list[dict], timeline: bool) -> None:
    """A timeline file is not a classification file: resuming one as the other would mix them up."""
    for record in records:
        if "error" in record:
            continue
        if ("start_s" in record) != timeline:
            held, asked = ("timeline", "classification") if "start_s" in record else ("classification", "timeline")
            raise ConfigError(f"{path} holds {held} results, not {asked} results; choose another --out")


def complete_videos(records: list[dict]) -> list[dict]:
    """Timeline lines of the videos whose windows are all there (and all error lines)."""
    seen = defaultdict(int)
    for record in records:
        seen[record["video"]] += 1
    return [r for r in records if "windows" not in r or seen[r["video"]] == r["windows"]]


def read_results(path: Path, timeline: bool = False, repair: bool = True) -> list[dict]:
    """The records of a result file, less a torn last line and cut-off timeline videos; `repair`
    rewrites the file without them (only the process that writes the file may)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    whole = data[: data.rfind(b"\n") + 1]
    records = parse_lines(path, whole)
    check_kind(path, records, timeline)
    kept = complete_videos(records) if timeline else records
    if repair and (len(whole) != len(data) or len(kept) != len(records)):
        write_all(path, kept)
    return kept


def write_all(path: Path, records: list[dict]) -> None:
    """Replace `path` by `records` at once: a reader sees the old file or the new one, never half. The
    temporary file gets a name of its own, made with O_EXCL (a link planted at a guessable name is never
    written through)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ResultWriter:
    """Appends records as JSON lines to `path` (stdout when None), each write flushed. The file opens with
    the first line: a run that fails before it leaves no file behind."""

    def __init__(self, path: Path | None):
        self.path = path
        self.file = None if path else sys.stdout

    def write(self, records: list[dict]) -> None:
        if self.file is None:  # never through a link (check_out_path refused one; one planted since fails here)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            self.file = os.fdopen(fd, "a")
        self.file.write("".join(json.dumps(r) + "\n" for r in records))  # one write: a video's lines together
        self.file.flush()

    def close(self) -> None:
        if self.path is not None and self.file is not None:
            self.file.close()

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_out_path(path: Path) -> None:
    if path.is_symlink():
        raise ConfigError(
            f"--out {path} is a symbolic link; name a regular file (results are never written through a link)"
        )
    if path.is_dir():
        raise ConfigError(f"--out {path} is a folder; name a file in it, e.g. {path / 'results.jsonl'}")
    if not path.parent.is_dir():
        raise ConfigError(f"--out {path}: the folder {path.parent} does not exist")


class FeatureRows:
    """--features-out F.npy: each video's embedding is appended as it comes (F.npy.rows: float32, one row a
    video; F.npy.rows.txt: its video, a line each), so a killed run keeps what it embedded. `finish` folds
    them, with the rows of an F.npy the same model made earlier, into F.npy and F.json
    (runtime/similar.py's FeatureIndex); a video embedded twice keeps its newest row."""

    def __init__(self, path: Path, model: dict, dim: int):
        from ..runtime.similar import FeatureIndex, npy_path

        self.path, self.model, self.dim = npy_path(path), model, dim
        self.data = self.path.with_name(self.path.name + ".rows")
        self.names = self.path.with_name(self.path.name + ".rows.txt")
        self.earlier = FeatureIndex.load(self.path) if self.path.exists() else None
        if self.earlier is not None:
            self.earlier.check_model(model)

    def done(self) -> set[str]:
        """The videos that have a row: in F.npy or appended by an earlier run."""
        earlier = set(self.earlier.videos) if self.earlier is not None else set()
        return earlier | set(self.appended()[0])

    def appended(self) -> tuple[list[str], np.ndarray]:
        """(videos, rows [n, D]) appended so far; a row cut off by a crash is dropped."""
        if not self.names.exists() or not self.data.exists():
            return [], np.zeros((0, self.dim), np.float32)
        videos = self.names.read_text().splitlines()
        rows = np.fromfile(self.data, dtype=np.float32)
        count = min(len(videos), len(rows) // self.dim)
        return videos[:count], rows[: count * self.dim].reshape(count, self.dim)

    def add(self, video: str, embedding: list[float]) -> None:
        """The row first, then its name: a crash between the two leaves a row without a name, dropped."""
        with open(self.data, "ab") as f:
            f.write(np.asarray(embedding, np.float32).tobytes())
        with open(self.names, "a") as f:
            f.write(video.replace("\n", " ") + "\n")

    def finish(self) -> int:
        """Write F.npy and F.json from every row; returns how many videos they hold."""
        from ..runtime.similar import FeatureIndex

        videos, rows = self.appended()
        if self.earlier is not None:
            videos, rows = (
                self.earlier.videos + videos,
                np.concatenate([self.earlier.features.reshape(-1, self.dim), rows]),
            )
        newest = {video: i for i, video in enumerate(videos)}  # a video embedded twice: its last row
        keep = sorted(newest.values())
        FeatureIndex([videos[i] for i in keep], rows[keep], self.model).save(self.path)
        self.data.unlink(missing_ok=True)
        self.names.unlink(missing_ok=True)
        return len(keep)
