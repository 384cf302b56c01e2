"""The list-file format of the reference, one parser for every reader (training, the list checker and
`stadapter-predict`): `<video path> <label>` per line.

The rule for a line:
- blank lines and lines starting with `#` are skipped;
- the label is the text after the line's last space or tab, a whole number in [0, num_classes); the path
  is everything before it, spaces included (`air drumming/x.mp4 1` is the path `air drumming/x.mp4`);
- where labels are optional (stadapter-predict), a line is a path alone when its last field is not a whole
  number and the line has no space or tab, or names an existing file as a whole (`my clip.mp4`). Any other
  line is refused: `video.mp4 one` is a label that is not a number, not a file named `video.mp4 one`.

Kept free of torch so the list checker's worker processes start fast.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

WHOLE_NUMBER = re.compile(r"[-+]?\d+")
EXPECTED = "expected '<video path> <integer label>'"


class ListLineError(ValueError):
    """A line the rule refuses; `path` is its path part (the whole line where there is no label)."""

    def __init__(self, problem: str, path: str):
        super().__init__(problem)
        self.path = path


@dataclass(frozen=True)
class ListEntry:
    number: int  # the line's number in its file, from 1
    path: str  # as written: relative to the list's root, spaces included
    label: int | None  # None: an unlabelled line (only where labels are optional)


def is_entry(line: str) -> bool:
    """False for blank lines and # comments, which are not entries."""
    line = line.strip()
    return bool(line) and not line.startswith("#")


def parse_list_line(
    line: str, num_classes: int, labels_required: bool = True, is_file: Callable[[str], bool] | None = None
) -> tuple[str, int | None] | None:
    """(path, label) of one line; None for blank lines and # comments; ValueError saying what is wrong.

    `is_file(path)`: whether a path names a file, asked only where labels are optional and the line
    could be an unlabelled path with spaces. Refusals are ListLineError (a ValueError)."""
    if not is_entry(line):
        return None
    line = line.strip()
    parts = line.rsplit(maxsplit=1)
    if len(parts) == 1:
        if labels_required:
            raise ListLineError(f"no label after the path: {EXPECTED}", line)
        return line, None
    path, label_text = parts
    if not WHOLE_NUMBER.fullmatch(label_text):
        if not labels_required and is_file is not None and is_file(line):
            return line, None  # an unlabelled file whose name holds a space
        also = "" if labels_required else f", and there is no file named {line!r}"
        raise ListLineError(f"label {label_text!r} is not an integer{also}: {EXPECTED}", path)
    label = int(label_text)
    if not 0 <= label < num_classes:
        raise ListLineError(f"label {label} is outside [0, {num_classes}) for {path!r}", path)
    return path, label


def read_list_entries(
    list_file: str | os.PathLike, num_classes: int, labels_required: bool = True, root: str | os.PathLike | None = None
) -> list[ListEntry]:
    """Every entry of a list file; a bad line fails naming the file and the line (ConfigError).

    `root`: the folder the paths are relative to, where labels are optional (to tell an unlabelled file
    with a space in its name from a bad label)."""
    list_file = Path(list_file)
    if not list_file.is_file():
        raise ConfigError(f"list file not found: {list_file}")
    base = Path(root) if root is not None else list_file.parent
    is_file = lambda path: (base / path).is_file()
    entries = []
    text = list_file.read_text(errors="surrogateescape")  # undecodable bytes in a file name stay those bytes
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            parsed = parse_list_line(line, num_classes, labels_required, is_file)
        except ValueError as e:
            raise ConfigError(f"{list_file}:{number}: {e}") from None
        if parsed is not None:
            entries.append(ListEntry(number, *parsed))
    if not entries:
        raise ConfigError(f"list file has no entries: {list_file}")
    return entries


def read_video_list(list_file: str | os.PathLike, root: str | os.PathLike, num_classes: int) -> list[tuple[Path, int]]:
    """Training's reading: every entry labelled, as (root / path, label)."""
    root = Path(root)
    return [(root / e.path, e.label) for e in read_list_entries(list_file, num_classes)]
