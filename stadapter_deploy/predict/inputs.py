"""What to predict on: video files, folders searched recursively, `@list.txt` files, and stream URLs.

A list file is the training list format (`<path> <integer label>` per line, paths relative to the list
file's folder), with the label optional. Blank lines and `#` comments are skipped. Every entry of a list
is a file: a stream URL or a capture device is opened only where the command line names it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..video.source import is_stream

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".flv", ".wmv", ".3gp")
NUMBER = re.compile(r"[-+]?\d+(\.\d*)?")


@dataclass(frozen=True)
class VideoInput:
    video: str  # a path, or a stream URL; the key of its result lines
    label: int | None = None  # ground truth from a list file
    stream: bool = False  # a stream URL or a capture device, named on the command line (never by a list file)


def is_video_file(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS and path.is_file()


def videos_in_folder(folder: Path) -> list[VideoInput]:
    videos = sorted(p for p in folder.rglob("*") if is_video_file(p))
    if not videos:
        raise ConfigError(f"no video files in {folder} (looked for {', '.join(VIDEO_EXTENSIONS)}, recursively)")
    return [VideoInput(str(p)) for p in videos]


def parse_entry(line: str, num_classes: int) -> tuple[str, int | None] | None:
    """'<path>' or '<path> <label>' -> (path, label or None); None for blank lines and comments."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    parts = line.rsplit(maxsplit=1)
    if len(parts) == 1 or not NUMBER.fullmatch(parts[1]):
        return line, None  # no label; a path may hold spaces
    if not parts[1].lstrip("+-").isdigit():
        raise ValueError(f"the label must be an integer, got {parts[1]!r}")
    label = int(parts[1])
    if not 0 <= label < num_classes:
        raise ValueError(f"label {label} is outside [0, {num_classes})")
    return parts[0], label


def read_list(list_file: Path, num_classes: int) -> list[VideoInput]:
    """Entries of a list file; a bad line fails naming the file and the line."""
    if not list_file.is_file():
        raise ConfigError(f"list file not found: {list_file}")
    entries = []
    for number, line in enumerate(list_file.read_text(errors="replace").splitlines(), start=1):
        try:
            entry = parse_entry(line, num_classes)
        except ValueError as e:
            raise ConfigError(f"{list_file}:{number}: {e}: {line.strip()!r}") from None
        if entry is not None:
            path, label = entry
            entries.append(VideoInput(os.path.normpath(list_file.parent / path), label))
    if not entries:
        raise ConfigError(f"list file has no entries: {list_file}")
    return entries


def collect_inputs(args: list[str], num_classes: int, streams: bool = False) -> list[VideoInput]:
    """Every video the arguments name, in order, each once. A missing file stays in: it gets an error line."""
    if not args:
        raise ConfigError("no input given: name video files, folders or @list.txt files")
    found = []
    for arg in args:
        if arg.startswith("@"):
            found += read_list(Path(arg[1:]), num_classes)
        elif is_stream(arg):
            if not streams:
                raise ConfigError(f"{arg} is a live stream: streams need --timeline")
            found.append(VideoInput(arg, stream=True))
        elif Path(arg).is_dir():
            found += videos_in_folder(Path(arg))
        else:
            found.append(VideoInput(arg))
    unique: dict[str, VideoInput] = {}
    for item in found:  # each video once, at its first place, with a label if any mention gives one
        if item.video not in unique or unique[item.video].label is None:
            unique[item.video] = item
    return list(unique.values())
