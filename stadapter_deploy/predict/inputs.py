"""What to predict on: video files, folders searched recursively, `@list.txt` files, and stream URLs.

A list file is the training list format (`<path> <integer label>` per line, paths relative to the list
file's folder), with the label optional, read by the one list parser (video/listfile.py states the rule
for paths with spaces). Every entry of a list is a file: a stream URL or a capture device is opened only
where the command line names it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..video.listfile import read_list_entries
from ..video.source import is_stream

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".flv", ".wmv", ".3gp")


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


def read_list(list_file: Path, num_classes: int) -> list[VideoInput]:
    """Entries of a list file (labels optional; paths relative to the list's folder), read by the one list
    parser (video/listfile.py); a bad line fails naming the file and the line."""
    entries = read_list_entries(list_file, num_classes, labels_required=False, root=list_file.parent)
    return [VideoInput(os.path.normpath(list_file.parent / e.path), e.label) for e in entries]


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
