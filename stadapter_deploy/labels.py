"""Class names: the one reader of a class-name file, and the one placeholder name."""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError


def read_labels(path: str | Path, num_classes: int | None = None, error: type[Exception] = ConfigError) -> list[str]:
    """One class name per line, index = line number (blank lines skipped); with num_classes, the count
    must match. Problems raise `error` (BundleError where a bundle or an export is at fault)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"labels file not found: {path}")
    labels = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if num_classes is not None and len(labels) != num_classes:
        raise error(f"{path} has {len(labels)} class names but the model has {num_classes} classes")
    return labels


def placeholder_labels(num_classes: int) -> list[str]:
    """Names for a model whose class names are unknown: class_0, class_1, ..."""
    return [f"class_{i}" for i in range(num_classes)]
