"""Training checkpoints in the reference layout, written atomically, found again for auto-resume.

`checkpoint-<epoch>.pth` holds `model` (the trainable weights only, as the reference saves them),
`optimizer`, `lr_sched`, `loss_scaler` and `next_epoch`, so the reference tools read ours, plus what
resuming here needs: the model config, the run's settings and the log so far.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from ..errors import WeightsError
from ..model.weights import load_pickle

REFERENCE_KEYS = ("model", "optimizer", "lr_sched", "loss_scaler", "next_epoch")
_NAME = re.compile(r"checkpoint-(\d+)\.pth")
TEMP_GLOB = ".checkpoint-*.pth.tmp-*"  # atomic_torch_save's temp files, left behind by a kill mid-save


def checkpoint_path(save_dir: Path, epoch: int) -> Path:
    return Path(save_dir) / f"checkpoint-{epoch}.pth"


def atomic_torch_save(obj: dict, path: Path) -> None:
    """Write to a temp file in the same directory, flush it to disk, then rename over `path`.

    A kill at any moment leaves either the old file or the new one, never a torn one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")  # matches TEMP_GLOB
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def list_checkpoints(save_dir: Path) -> list[tuple[int, Path]]:
    """(epoch, path) of every checkpoint-N.pth in `save_dir`, oldest first."""
    found = []
    for p in Path(save_dir).glob("checkpoint-*.pth"):
        m = _NAME.fullmatch(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def load_training_checkpoint(path: Path) -> dict:
    """Read a checkpoint (through the one safe reader) and check it has the keys resuming needs."""
    try:
        state = load_pickle(path)
    except WeightsError as e:  # missing, truncated, not a torch file, unpicklable content
        raise WeightsError(f"not a readable training checkpoint: {e}") from None
    missing = [k for k in REFERENCE_KEYS if k not in state]
    if missing:
        raise WeightsError(f"{path} is not a training checkpoint: missing {missing}")
    return state


def latest_valid_checkpoint(save_dir: Path) -> tuple[Path, dict] | None:
    """The newest checkpoint that loads; broken ones (e.g. from a crashed disk) are skipped with a note."""
    for _, path in reversed(list_checkpoints(save_dir)):
        try:
            return path, load_training_checkpoint(path)
        except WeightsError as e:
            print(f"auto-resume: skipping {path.name}: {e}", flush=True)
    return None


def remove_torn_temp_files(save_dir: Path) -> list[Path]:
    """Delete temp files of saves that were killed midway (only one process saves, and never meanwhile)."""
    torn = sorted(Path(save_dir).glob(TEMP_GLOB))
    for p in torn:
        p.unlink(missing_ok=True)
    return torn


def prune_checkpoints(save_dir: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints (keep_last <= 0 keeps everything), and torn temp files."""
    torn = remove_torn_temp_files(save_dir)
    old = [p for _, p in list_checkpoints(save_dir)[:-keep_last]] if keep_last > 0 else []
    for p in old:
        p.unlink(missing_ok=True)
    return torn + old
