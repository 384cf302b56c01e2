"""Training checkpoints in the reference layout, written atomically, found again for auto-resume.

`checkpoint-<epoch>.pth` holds `model` (the trainable weights only, as the reference saves them),
`optimizer`, `lr_sched`, `loss_scaler` and `next_epoch`, so the reference tools read ours, plus what
resuming here needs: the model config, the run's settings and identity (run_folder.py) and the log so far.

Every file is written to a temp name beside its target, flushed to disk and renamed over it: a kill or
a full disk at any moment leaves the old file or the new one, never a torn one. A write that fails is
one line naming the file and the reason (DiskError), never torch's zip-writer message.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from ..errors import STAdapterError, WeightsError
from ..model.weights import load_pickle, save_checkpoint

REFERENCE_KEYS = ("model", "optimizer", "lr_sched", "loss_scaler", "next_epoch")
_NAME = re.compile(r"checkpoint-(\d+)\.pth")
TORN_SUFFIX = ".torn"  # an unreadable checkpoint, set aside by auto-resume (kept for a look, never resumed)
# What a kill mid-write leaves: the temp files of atomic_torch_save, write_text_atomically and plot_curves,
# the folders of save_final_atomically
TEMP_GLOBS = (
    ".checkpoint-*.pth.tmp-*",
    ".log.jsonl.tmp-*",
    ".run.json.tmp-*",
    ".curves.png.tmp-*",
    ".final.tmp-*",
    ".final.old-*",
)


class DiskError(STAdapterError):
    """A file of the run could not be written: a full disk, a read-only or vanished folder."""


def checkpoint_path(save_dir: Path, epoch: int) -> Path:
    return Path(save_dir) / f"checkpoint-{epoch}.pth"


_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")  # how safetensors (Rust's std::io) names the errno


def _os_error(e: BaseException) -> OSError | None:
    """The OSError behind `e`: itself, the one torch's writer met before raising its RuntimeError, or the
    one a SafetensorError names in its text."""
    first, seen = e, 0
    while e is not None and seen < 10:
        if isinstance(e, OSError) and e.errno is not None:
            return e
        e, seen = e.__cause__ or e.__context__, seen + 1
    if m := _RUST_OS_ERROR.search(str(first)):
        code = int(m.group(1))
        return OSError(code, os.strerror(code))
    return None


def free_mb(path: Path) -> float | None:
    with contextlib.suppress(OSError):
        return shutil.disk_usage(path).free / 2**20
    return None


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn a failed write of `path` into one line: the file, the reason, and the free space on a full disk."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, RuntimeError, SafetensorError) as e:
        cause = _os_error(e)
        if cause is None:
            raise
        reason = (cause.strerror or str(cause)).lower()
        if cause.errno in (errno.ENOSPC, errno.EDQUOT):
            free = free_mb(Path(path).parent)
            reason += "" if free is None else f" ({free:.1f} MB free)"
        raise DiskError(f"cannot write {path}: {reason}") from None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_torch_save(obj: dict, path: Path) -> None:
    """torch.save to a temp file in the same folder, flushed to disk, then renamed over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")  # matches TEMP_GLOBS
    try:
        with writing(path):
            with open(tmp, "wb") as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def write_text_atomically(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with writing(path):
            tmp.write_text(text)
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def save_final_atomically(model: torch.nn.Module, folder: Path, extra: dict) -> Path:
    """Our checkpoint format (config.json + model.safetensors) in a temp folder, flushed, swapped for `folder`.

    A kill or a full disk midway leaves the previous `folder` (or none), never a half-written one.
    """
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    try:
        with writing(folder):
            shutil.rmtree(tmp, ignore_errors=True)
            save_checkpoint(model, tmp, extra=extra)
            for f in tmp.iterdir():
                _fsync(f)
            if folder.exists():
                os.replace(folder, old)
            os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return folder


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


def latest_valid_checkpoint(
    save_dir: Path, check: Callable[[Path, dict], None] | None = None, set_aside: bool = False
) -> tuple[Path, dict] | None:
    """The newest checkpoint that loads (and passes `check`, which raises to refuse it).

    Unreadable ones (a disk that failed, a copy cut short) are skipped with a line each; with
    `set_aside` they are renamed to `*.pth.torn`, so that pruning never keeps one in place of a good one.
    """
    for _, path in reversed(list_checkpoints(save_dir)):
        try:
            state = load_training_checkpoint(path)
        except WeightsError as e:
            aside = ""
            if set_aside:
                with contextlib.suppress(OSError):
                    os.replace(path, path.with_name(path.name + TORN_SUFFIX))
                    aside = f" (kept as {path.name}{TORN_SUFFIX})"
            print(f"auto-resume: skipping {path.name}{aside}: {e}", flush=True)
            continue
        if check is not None:
            check(path, state)
        return path, state
    return None


def remove_torn_temp_files(save_dir: Path) -> list[Path]:
    """Delete what saves killed midway left (only rank 0 saves, and never meanwhile)."""
    torn = sorted({p for pattern in TEMP_GLOBS for p in Path(save_dir).glob(pattern)})
    for p in torn:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return torn


def prune_checkpoints(save_dir: Path, keep_last: int, newest: int | None = None) -> list[Path]:
    """Keep the `keep_last` newest checkpoints up to epoch `newest`, the one just written (keep_last <= 0
    keeps them all); delete older ones, torn temp files, and any of a later epoch (left from before a
    resume from an earlier one: a future this run no longer has)."""
    torn = remove_torn_temp_files(save_dir)
    found = list_checkpoints(save_dir)
    later = [p for e, p in found if newest is not None and e > newest]
    kept = [(e, p) for e, p in found if newest is None or e <= newest]
    old = [p for _, p in kept[:-keep_last]] if keep_last > 0 else []
    for p in later + old:
        p.unlink(missing_ok=True)
    return torn + later + old
