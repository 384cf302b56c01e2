"""The training side of the video pipeline: list files -> datasets, synthetic data on demand.

A thin adapter over stadapter_deploy.video (the one preprocessing path); nothing here decodes or
transforms frames itself.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..recipes import class_names as shipped_class_names
from . import distributed as D
from .config import TrainConfig


def ensure_synthetic_dataset(cfg: TrainConfig, dist: D.DistInfo) -> None:
    """Generate the synthetic motion dataset at cfg.data_root unless its lists are already there."""
    root = Path(cfg.data_root)
    if dist.is_main and not ((root / "train.txt").is_file() and (root / "val.txt").is_file()):
        from ..video.synthetic import make_synthetic_dataset

        print(f"generating the synthetic motion dataset in {root} ...", flush=True)
        make_synthetic_dataset(root, seed=0)
    D.barrier()


def class_names(cfg: TrainConfig) -> list[str]:
    """From --class-names / the data config, else the list shipped for the dataset, else 'class N'."""
    if cfg.class_names is not None and Path(cfg.class_names).is_file():
        names = [s.strip() for s in Path(cfg.class_names).read_text().splitlines() if s.strip()]
        source = str(cfg.class_names)
    else:
        try:
            names, source = shipped_class_names(cfg.dataset), f"the shipped {cfg.dataset} class list"
        except ValueError:
            return [f"class {i}" for i in range(cfg.num_classes)]
        if len(names) != cfg.num_classes:  # e.g. a subset of K400: no trustworthy names
            return [f"class {i}" for i in range(cfg.num_classes)]
    if len(names) != cfg.num_classes:
        raise ConfigError(f"{source} has {len(names)} class names but num_classes is {cfg.num_classes}")
    return names
