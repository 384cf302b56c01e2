"""TrainConfig: a recipe's values, then the data config file (TOML), then command-line overrides.

A data config is a small TOML file; one file can hold several datasets, one table each:

    [k400]
    train_root = "/data/k400/train"      # folder the list's paths are relative to
    train_list = "/data/k400/train.txt"  # lines "<relative path> <label>"
    val_root = "/data/k400/val"
    val_list = "/data/k400/val.txt"
    num_classes = 400                    # optional; the recipe's count by default
    class_names = "/data/k400/classes.txt"  # optional; one name per line

Keys may also sit at the top level for a single-dataset file. Relative paths are relative to the file.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..recipes import get_recipe

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DATA_CONFIG_ENV = "STADAPTER_DATA_CONFIG"
DATA_KEYS = ("train_root", "train_list", "val_root", "val_list")
PATH_KEYS = (*DATA_KEYS, "class_names")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
MAX_AUTO_BATCH = 64  # per process, as the reference recipes run (3 x 64, 4 x 64)


@dataclass
class TrainConfig:
    dataset: str
    save_dir: Path
    # recipe (docs/method.md); every value can be overridden
    preset: str
    num_classes: int
    num_frames: int
    sampling_rate: int
    spatial_views: int
    temporal_views: int
    train_augment: str
    total_batch: int  # the effective batch: per-process batch x processes x accumulation steps
    epochs: int
    warmup_epochs: float
    lr_per_256: float
    weight_decay: float
    # data
    train_root: Path | None = None
    train_list: Path | None = None
    val_root: Path | None = None
    val_list: Path | None = None
    class_names: Path | None = None
    data_root: Path | None = None  # synthetic only: generated here when absent
    # model
    clip: Path | None = None
    pretrain: Path | None = None
    no_adapters: bool = False
    # run
    batch_size: int | None = None  # per process per forward; None = the largest divisor <= 64
    eval_batch_size: int | None = None
    precision: str = "auto"
    device: str = "auto"
    num_workers: int = 4
    seed: int = 0
    eval_every: int = 1
    keep_last: int = 3
    auto_resume: bool = False
    resume: Path | None = None
    eval_only: bool = False
    stop_after_epochs: int | None = None  # leave the loop early, as a kill would (resume tests, time limits)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON/torch-safe view (paths as strings)."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}

    def recipe_meta(self) -> dict:
        """What export and serving need to preprocess like this run evaluates."""
        return {
            "dataset": self.dataset,
            "num_frames": self.num_frames,
            "sampling_rate": self.sampling_rate,
            "spatial_views": self.spatial_views,
            "temporal_views": self.temporal_views,
        }


def recipe_defaults(dataset: str) -> dict:
    recipe = get_recipe(dataset)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {f.name: getattr(recipe, f.name) for f in dataclasses.fields(recipe)}
    values |= dataclasses.asdict(recipe.preprocessing)
    return {k: v for k, v in values.items() if k in fields and k != "dataset"}


def read_data_config(path: str | Path, dataset: str) -> dict:
    """The [dataset] table of a TOML data config (or its top-level keys), paths made absolute."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"data config {path} does not exist (set by --data-config or ${DATA_CONFIG_ENV})")
    try:
        doc = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"data config {path} is not valid TOML: {e}") from None
    table = doc.get(dataset, {k: v for k, v in doc.items() if not isinstance(v, dict)})
    if not isinstance(table, dict):
        raise ConfigError(f"data config {path}: [{dataset}] must be a table")
    known = (*PATH_KEYS, "num_classes")
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(f"data config {path}: unknown keys {unknown} for {dataset}; known keys: {list(known)}")
    out = {}
    for key, value in table.items():
        if key == "num_classes":
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"data config {path}: num_classes must be a positive integer, got {value!r}")
            out[key] = value
        else:
            p = Path(str(value)).expanduser()
            out[key] = p if p.is_absolute() else (path.parent / p)
    return out


def build_config(dataset: str, save_dir: str | Path, data_config: str | Path | None = None, **overrides) -> TrainConfig:
    """Recipe defaults <- data config file (explicit, else ${STADAPTER_DATA_CONFIG}) <- overrides.

    Overrides set to None are ignored, so argparse namespaces pass straight through.
    """
    values = recipe_defaults(dataset)
    data_config = data_config or os.environ.get(DATA_CONFIG_ENV) or None
    if data_config:
        values |= read_data_config(data_config, dataset)
    values |= {k: v for k, v in overrides.items() if v is not None}
    for key in (*PATH_KEYS, "data_root", "clip", "pretrain", "resume"):
        if values.get(key) is not None:
            values[key] = Path(values[key]).expanduser()
    if dataset == "synthetic":
        root = values.get("data_root") or Path("runs/synthetic-data")
        values["data_root"] = root
        values.setdefault("train_root", root)
        values.setdefault("val_root", root)
        values.setdefault("train_list", root / "train.txt")
        values.setdefault("val_list", root / "val.txt")
        values.setdefault("class_names", root / "classes.txt")
    try:
        return TrainConfig(dataset=dataset, save_dir=Path(save_dir), **values)
    except TypeError as e:
        raise ConfigError(f"bad training option: {e}") from None


def check_config(cfg: TrainConfig) -> None:
    """Everything that can be checked before any work: unset or missing paths, bad numbers."""
    problems = []
    for key in DATA_KEYS:
        value = getattr(cfg, key)
        flag = "--" + key.replace("_", "-")
        if value is None:
            problems.append(
                f'{key} is not set: pass {flag} PATH, or put {key} = "..." in the [{cfg.dataset}] table '
                f"of a TOML data config given by --data-config FILE or ${DATA_CONFIG_ENV}"
            )
        elif key.endswith("_list") and not value.is_file():
            problems.append(f"{key} {value} does not exist (set by {flag} or the data config)")
        elif key.endswith("_root") and not value.is_dir():
            problems.append(f"{key} {value} is not a folder (set by {flag} or the data config)")
    for key in ("clip", "pretrain", "resume", "class_names"):
        value = getattr(cfg, key)
        if value is not None and not value.exists():
            problems.append(f"{key} {value} does not exist")
    positive = ("num_classes", "num_frames", "total_batch", "epochs", "spatial_views", "temporal_views")
    problems += [f"{k} must be >= 1, got {getattr(cfg, k)}" for k in positive if getattr(cfg, k) < 1]
    if cfg.spatial_views not in (1, 3):
        problems.append(f"spatial_views must be 1 or 3, got {cfg.spatial_views}")
    if cfg.sampling_rate < 0:
        problems.append(f"sampling_rate must be >= 0 (0 = uniform), got {cfg.sampling_rate}")
    if cfg.sampling_rate == 0 and cfg.temporal_views != 1:
        problems.append("uniform sampling (sampling_rate 0) covers the whole video: use temporal_views 1")
    if cfg.warmup_epochs < 0 or cfg.lr_per_256 <= 0 or cfg.weight_decay < 0:
        problems.append("need warmup_epochs >= 0, lr_per_256 > 0 and weight_decay >= 0")
    if cfg.precision not in PRECISIONS:
        problems.append(f"precision must be one of {PRECISIONS}, got {cfg.precision!r}")
    if cfg.batch_size is not None and cfg.batch_size < 1:
        problems.append(f"batch_size must be >= 1, got {cfg.batch_size}")
    if cfg.resume is not None and cfg.auto_resume:
        problems.append("pass either --resume PATH or --auto-resume, not both")
    if problems:
        raise ConfigError("bad training configuration:\n  " + "\n  ".join(problems))


def batch_plan(total_batch: int, world_size: int, batch_size: int | None) -> tuple[int, int]:
    """(per-process batch, accumulation steps) with batch x world_size x steps == total_batch exactly."""
    if total_batch % world_size:
        raise ConfigError(f"total batch {total_batch} is not divisible by the {world_size} processes")
    per_rank = total_batch // world_size
    if batch_size is None:
        batch_size = max(d for d in range(1, min(per_rank, MAX_AUTO_BATCH) + 1) if per_rank % d == 0)
    if per_rank % batch_size:
        raise ConfigError(
            f"total batch {total_batch} = {world_size} processes x batch {batch_size} x accumulation steps "
            f"has no whole number of steps; pick --batch-size dividing {per_rank}"
        )
    return batch_size, per_rank // batch_size
