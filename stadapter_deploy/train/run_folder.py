"""A save folder belongs to one run: `run.json` holds the run's identity, and another run is refused there.

The identity is what makes two runs the same run: the recipe (hyperparameters, preprocessing), the
data (dataset name and the content of its lists), the model (architecture, adapters, head, the
backbone file), the seed, the world size and the total batch. Not in it: what only changes how fast
the same numbers come out (per-process batch, workers, device) and where files live.

Every checkpoint carries the identity too, so auto-resume checks a checkpoint before resuming it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

from ..errors import ConfigError
from ..preprocessing import Preprocessing
from .checkpoint import TEMP_GLOBS, TORN_SUFFIX, DiskError, list_checkpoints, write_text_atomically
from .config import TrainConfig

RUN_FILE = "run.json"
# What a run writes into its folder (besides the temp files of TEMP_GLOBS): --overwrite removes these only
RUN_FILES = (RUN_FILE, "log.jsonl", "curves.png", "skipped_videos.txt", "eval.json", "final")
TRAINING_FILES = ("log.jsonl", "final")  # with checkpoints: what tells that a run trained here
RUN_GLOBS = ("checkpoint-*.pth", f"checkpoint-*.pth{TORN_SUFFIX}", *TEMP_GLOBS)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_fingerprint(path: Path | None) -> dict | None:
    """A weight file (or folder) by name and size: reading gigabytes of CLIP weights to hash them is not worth it."""
    if path is None:
        return None
    path = Path(path)
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    return {"name": path.name, "bytes": sum(p.stat().st_size for p in files)}


def run_identity(cfg: TrainConfig, model_config: dict, preprocessing: Preprocessing, world_size: int) -> dict:
    recipe = dataclasses.asdict(cfg.recipe.replace(preprocessing=preprocessing))
    recipe["preprocessing"] = preprocessing.to_dict()
    total_batch = recipe.pop("total_batch")
    identity = {
        "recipe": recipe,
        "data": {
            "dataset": cfg.dataset,
            "train_list_sha256": sha256_file(cfg.train_list),
            "val_list_sha256": sha256_file(cfg.val_list),
        },
        "model": {**model_config, "clip": file_fingerprint(cfg.clip), "pretrain": file_fingerprint(cfg.pretrain)},
        "seed": cfg.seed,
        "world_size": world_size,
        "total_batch": total_batch,
    }
    return json.loads(json.dumps(identity))  # as run.json holds it (tuples as lists), so the two compare equal


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def _show(value) -> str:
    text = json.dumps(value)
    return text[:13] + '..."' if len(text) > 16 and isinstance(value, str) else text


def differences(recorded: dict, current: dict, limit: int = 4) -> str:
    """'seed 0 there, 1 here; recipe.epochs 12 there, 3 here' (the first `limit`, then how many more)."""
    old, new = _flatten(recorded), _flatten(current)
    keys = [k for k in dict.fromkeys([*new, *old]) if old.get(k, "<unset>") != new.get(k, "<unset>")]
    shown = [f"{k} {_show(old.get(k))} there, {_show(new.get(k))} here" for k in keys[:limit]]
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return "; ".join(shown) + more


def run_files(save_dir: Path) -> list[Path]:
    """The files and folders of a run in `save_dir` (not anything else a user keeps there)."""
    save_dir = Path(save_dir)
    found = [save_dir / name for name in RUN_FILES if (save_dir / name).exists()]
    found += [p for pattern in RUN_GLOBS for p in save_dir.glob(pattern)]
    return sorted(set(found))


def remove_run_files(save_dir: Path) -> list[Path]:
    removed = run_files(save_dir)
    for p in removed:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
    return removed


def check_writable(save_dir: Path) -> None:
    """Create `save_dir` and write (and remove) a small file there: refused now, not after an epoch."""
    save_dir = Path(save_dir)
    probe = save_dir / f".write-test-{os.getpid()}"
    try:
        save_dir.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"stadapter-deploy checks that it can write here\n")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as e:
        raise DiskError(f"cannot write to --save-dir {save_dir}: {(e.strerror or str(e)).lower()}") from None


def read_run_file(save_dir: Path) -> dict | None:
    path = Path(save_dir) / RUN_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())["identity"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(
            f"{path} is unreadable ({type(e).__name__}): which run owns {save_dir} is unknown; "
            "use a new --save-dir, or --overwrite to delete that run's files"
        ) from None


def claim(save_dir: Path, identity: dict, *, overwrite: bool, resuming: bool) -> None:
    """Make `save_dir` this run's, or refuse in one line: it holds another run's files, or this run's
    checkpoints when not resuming (starting over would lose them). --overwrite deletes the old files."""
    save_dir = Path(save_dir)
    if overwrite:
        removed = remove_run_files(save_dir)
        if removed:
            print(f"--overwrite: removed {len(removed)} files of the earlier run in {save_dir}", flush=True)
    else:
        recorded = read_run_file(save_dir)
        checkpoints = list_checkpoints(save_dir)
        trained_here = checkpoints or any((save_dir / name).exists() for name in TRAINING_FILES)
        if recorded is None and trained_here:
            raise ConfigError(
                f"{save_dir} holds training files but no {RUN_FILE}, so which run wrote them is unknown: "
                "use a new --save-dir, or --overwrite to delete them"
            )
        if recorded is not None and recorded != identity:
            raise ConfigError(
                f"{save_dir} belongs to another run ({differences(recorded, identity)}): "
                "use a new --save-dir, or --overwrite to delete that run's files"
            )
        if checkpoints and not resuming:
            raise ConfigError(
                f"{save_dir} holds this run's checkpoints up to {checkpoints[-1][1].name}: pass --auto-resume "
                "to continue, or --overwrite to start over"
            )
        if recorded is not None:
            return
    write_text_atomically(save_dir / RUN_FILE, json.dumps({"identity": identity}, indent=2) + "\n")
