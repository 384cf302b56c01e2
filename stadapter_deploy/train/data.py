"""The training side of the video pipeline: list files -> datasets, synthetic data on demand.

A thin adapter over stadapter_deploy.video (the one preprocessing path); nothing here decodes or
transforms frames itself.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import ConfigError
from ..labels import placeholder_labels, read_labels
from ..preprocessing import Preprocessing
from ..recipes import class_names as shipped_class_names
from ..video.dataset import VideoClipDataset
from ..video.limits import DecodeLimits
from ..video.listfile import read_video_list
from . import distributed as D
from .config import TrainConfig


def ensure_synthetic_dataset(cfg: TrainConfig, dist: D.DistInfo) -> None:
    """Generate the synthetic motion dataset at cfg.data_root unless its lists are already there, or the
    run reads other lists (--train-list/--val-list or a data config name them)."""
    root = Path(cfg.data_root)
    reads_root = {Path(cfg.train_list), Path(cfg.val_list)} <= {root / "train.txt", root / "val.txt"}
    missing = not ((root / "train.txt").is_file() and (root / "val.txt").is_file())
    if dist.is_main and reads_root and missing:
        from ..video.synthetic import make_synthetic_dataset

        print(f"generating the synthetic motion dataset in {root} ...", flush=True)
        make_synthetic_dataset(root, seed=0)
    D.barrier()


def class_names(cfg: TrainConfig) -> list[str]:
    """From --class-names / the data config, else the list shipped for the dataset, else class_N."""
    num_classes = cfg.recipe.num_classes
    if cfg.class_names is not None:
        return read_labels(cfg.class_names, num_classes)
    try:
        names = shipped_class_names(cfg.dataset)
    except ValueError:
        names = []
    # another count than the shipped list's (e.g. a subset of K400): no trustworthy names
    return names if len(names) == num_classes else placeholder_labels(num_classes)


SKIP_LOGGER = "stadapter_deploy.video.dataset"  # where VideoClipDataset logs each broken video


ROOT_SAMPLE = 20  # entries of each list looked up before training: none there means a wrong root


def check_root(entries: list[tuple[Path, int]], list_file: Path, root: Path, flag: str) -> None:
    """Refuse, in one line, a root under which none of a sample of the list's videos exists: training would
    otherwise skip every video until the DataLoader gives up. Some missing is fine (they are skipped)."""
    sample = entries[:: max(1, len(entries) // ROOT_SAMPLE)][:ROOT_SAMPLE]
    if sample and not any(path.is_file() for path, _ in sample):
        raise ConfigError(
            f"none of {len(sample)} videos of {list_file} looked up is under {root} (the first: {sample[0][0]} "
            f"does not exist); the list's paths are relative to {flag}: is it right?"
        )


def build_datasets(
    cfg: TrainConfig, pre: Preprocessing, limits: DecodeLimits | None = None
) -> tuple[VideoClipDataset, VideoClipDataset]:
    """Training (random clips, the recipe's augmentation) and evaluation (all views) datasets."""
    train = read_video_list(cfg.train_list, cfg.train_root, cfg.recipe.num_classes)
    val = read_video_list(cfg.val_list, cfg.val_root, cfg.recipe.num_classes)
    check_root(train, cfg.train_list, cfg.train_root, "--train-root (or train_root in the data config)")
    check_root(val, cfg.val_list, cfg.val_root, "--val-root (or val_root in the data config)")
    train_set = VideoClipDataset(train, pre, True, cfg.recipe.train_augment, cfg.seed, limits=limits)
    val_set = VideoClipDataset(val, pre, train=False, seed=cfg.seed, limits=limits)
    return train_set, val_set


class SkipLog(logging.FileHandler):
    """Appends '<path>\t<why>' for each video the dataset skips; every process (workers too) appends."""

    def format(self, record: logging.LogRecord) -> str:
        if isinstance(record.args, tuple) and len(record.args) == 2:
            path, why = record.args
            return f"{path}\t{why}".replace("\n", " ")
        return record.getMessage().replace("\n", " ")


def log_skipped_videos(path: Path) -> None:
    """Record the dataset's skipped videos in `path` (idempotent; also a DataLoader worker_init_fn target)."""
    logger = logging.getLogger(SKIP_LOGGER)
    target = os.path.abspath(path)
    for h in [h for h in logger.handlers if isinstance(h, SkipLog)]:
        if h.baseFilename == target:
            return
        logger.removeHandler(h)  # left by an earlier run in this process
        h.close()
    logger.addHandler(SkipLog(target, mode="a", delay=True))  # opened lazily, in each process


def stop_logging_skipped() -> None:
    """Detach and close the skipped-video file (run() ends; the logger is process-global)."""
    logger = logging.getLogger(SKIP_LOGGER)
    for h in [h for h in logger.handlers if isinstance(h, SkipLog)]:
        logger.removeHandler(h)
        h.close()


def read_skipped(path: Path) -> list[str]:
    """Distinct skipped videos recorded in `path` ('<path>\t<why>'), in the order first met."""
    if not path.is_file():
        return []
    return list(dict.fromkeys(line for line in path.read_text().splitlines() if line.strip()))
