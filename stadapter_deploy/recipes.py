"""The reference training/eval recipes (docs/method.md) and the class-name files, in one place.

Training reads the hyperparameters; export and serving read the preprocessing and class names. A recipe
runs on any dataset (`python -m train k400 --dataset ucf101`): the data config's table gives the data.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .labels import read_labels
from .preprocessing import Preprocessing


@dataclass(frozen=True)
class Recipe:
    dataset: str  # the recipe's name, and the dataset it was made for
    # The model without --clip. With --clip and no --preset the backbone is the file's, and this preset
    # gives only the adapters' placement, width and the head's dropout (in every block of that backbone).
    preset: str
    num_classes: int
    preprocessing: Preprocessing  # sampling, size, normalization and eval views
    # Without --clip the frozen backbone is random: what the synthetic recipe is for, and 12 epochs of
    # GPU time thrown away on a real one, which refuses to run without --clip unless told otherwise.
    random_backbone: bool = False
    train_augment: str = "k400"  # "k400": short-side jitter + crop + flip; "ssv2": RRC + RandAugment, no flip
    # optimization
    total_batch: int = 192
    epochs: int = 12
    warmup_epochs: float = 2.0
    lr_per_256: float = 1e-3
    weight_decay: float = 0.01

    def replace(self, **changes) -> Recipe:
        return dataclasses.replace(self, **changes)


RECIPES: dict[str, Recipe] = {
    "k400": Recipe(
        "k400",
        "vit_b16_adapter12x384",
        400,
        Preprocessing(num_frames=8, sampling_rate=16, size=224, temporal_views=3),
        train_augment="k400",
        total_batch=192,
        epochs=12,
    ),
    "ssv2": Recipe(
        "ssv2",
        "vit_b16_adapter24x384",
        174,
        Preprocessing(num_frames=8, sampling_rate=0, size=224, spatial_views=3),
        train_augment="ssv2",
        total_batch=256,
        epochs=50,
    ),
    # Tiny model on generated motion clips: the smoke test and the quickstart (see video/synthetic.py).
    "synthetic": Recipe(
        "synthetic",
        "tiny",
        6,
        Preprocessing(num_frames=8, sampling_rate=0, size=32),
        random_backbone=True,
        train_augment="none",
        total_batch=32,
        epochs=8,
        warmup_epochs=1.0,
        lr_per_256=0.12,
    ),
}


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown dataset recipe {name!r}; choose one of {sorted(RECIPES)}") from None


def class_names(dataset: str) -> list[str]:
    """Class names shipped with the package for `dataset` (index = line number)."""
    path = Path(str(resources.files("stadapter_deploy") / "data" / f"{dataset}_classes.txt"))
    if not path.is_file():
        raise ValueError(f"no class-name file for {dataset!r} in stadapter_deploy/data/")
    return read_labels(path)
