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

REFERENCE_KEYS = ("model", "optimizer", "lr_sched", "loss_scaler", "next_epoch")
_NAME = re.compile(r"checkpoint-(\d+)\.pth")


def checkpoint_path(save_dir: Path, epoch: int) -> Path:
    return Path(save_dir) / f"checkpoint-{epoch}.pth"


def atomic_torch_save(obj: dict, path: Path) -> None:
    """Write to a temp file in the same directory, flush it to disk, then rename over `path`.

    A kill at any moment leaves either the old file or the new one, never a torn one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
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
    """Read a checkpoint and check it has the reference keys; WeightsError if not."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, unpicklable content
        raise WeightsError(f"{path} is not a readable training checkpoint ({type(e).__name__}: {e})") from None
    missing = [k for k in REFERENCE_KEYS if not isinstance(state, dict) or k not in state]
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


def prune_checkpoints(save_dir: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints (keep_last <= 0 keeps everything)."""
    if keep_last <= 0:
        return []
    old = [p for _, p in list_checkpoints(save_dir)[:-keep_last]]
    for p in old:
        p.unlink(missing_ok=True)
    return old
