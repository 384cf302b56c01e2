"""The list-file format of the reference: `<video path relative to a root> <integer label>` per line.

Paths may contain spaces (the label is after the last whitespace); blank lines and `#` comments are
skipped. Kept free of torch so the list checker's worker processes start fast.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError


def parse_list_line(line: str) -> tuple[str, str] | None:
    """'<path with maybe spaces> <label>' -> (path, label text); None for blank lines and # comments."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    parts = line.rsplit(maxsplit=1)
    if len(parts) != 2:
        raise ValueError("expected '<video path> <label>'")
    return parts[0], parts[1]


def read_video_list(list_file: str | os.PathLike, root: str | os.PathLike, num_classes: int) -> list[tuple[Path, int]]:
    """Entries (root / path, label) of a list file; a malformed line fails naming the file and line."""
    list_file, root = Path(list_file), Path(root)
    if not list_file.is_file():
        raise ConfigError(f"list file not found: {list_file}")
    entries = []
    for number, line in enumerate(list_file.read_text().splitlines(), start=1):
        try:
            parsed = parse_list_line(line)
            if parsed is None:
                continue
            path, label_text = parsed
            label = int(label_text)
        except ValueError:
            raise ConfigError(f"{list_file}:{number}: expected '<video path> <integer label>', got {line!r}") from None
        if not 0 <= label < num_classes:
            raise ConfigError(f"{list_file}:{number}: label {label} is outside [0, {num_classes}) for {path!r}")
        entries.append((root / path, label))
    if not entries:
        raise ConfigError(f"list file has no entries: {list_file}")
    return entries
