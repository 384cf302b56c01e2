"""`python -m train {k400,ssv2,synthetic} [--dataset NAME]`: argument parsing over stadapter_deploy.train.

Defaults come from the recipe (stadapter_deploy/recipes.py) and the data from the dataset's table of
the data config; every flag left unset keeps the recipe's value. The flags are generated from the
fields of TrainConfig and the recipe (stadapter_deploy/train/config.py), help text included. The same
command runs under `torchrun --nproc_per_node N -m train ...`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path

from stadapter_deploy.errors import STAdapterError
from stadapter_deploy.preprocessing import Preprocessing
from stadapter_deploy.recipes import RECIPES, Recipe
from stadapter_deploy.train.config import RECIPE_FLAGS, TrainConfig, build_config


def recipes_table() -> str:
    rows = ["recipe defaults (override any of them with the flags above):"]
    for name, r in RECIPES.items():
        p = r.preprocessing
        views = f"{p.spatial_views}x{p.temporal_views} views"
        backbone = "random backbone without --clip" if r.random_backbone else "needs --clip"
        rows.append(
            f"  {name:9s} preset {r.preset} ({backbone}), {r.num_classes} classes, {p.num_frames} frames, "
            f"rate {p.sampling_rate}, {views}, batch {r.total_batch}, {r.epochs} epochs ({r.warmup_epochs:g} warmup), "
            f"lr {r.lr_per_256:g}/256, wd {r.weight_decay:g}, augment {r.train_augment}"
        )
    return "\n".join(rows)


EXAMPLES = """
examples:
  python -m train synthetic --save-dir runs/synthetic
  python -m train k400 --clip ViT-B-16.pt --data-config data.toml --save-dir runs/k400 --auto-resume
  python -m train k400 --dataset ucf101 --clip ViT-L-14-336px.pt --data-config data.toml --save-dir runs/ucf101
  # 8 GPUs; a worker that dies restarts the group (up to 3 times), which resumes from the newest checkpoint
  torchrun --nproc_per_node 8 --max-restarts 3 -m train k400 --clip ViT-B-16.pt --data-config data.toml \\
      --save-dir runs/k400
"""


GROUP_TITLES = {
    "data": "data (from flags, or a TOML file: see README)",
    "model": "model",
    "recipe": "recipe overrides",
    "run": "run",
}


def flag_fields() -> list[tuple[str, type, dict]]:
    """(name, type, metadata) of every setting that is a flag: TrainConfig's, then the recipe's."""
    out = []
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if "help" in f.metadata:
            out.append((f.name, hints[f.name], dict(f.metadata)))
    hints = typing.get_type_hints(Recipe) | typing.get_type_hints(Preprocessing)
    for name, meta in RECIPE_FLAGS.items():
        out.append((name, hints[name], {"group": "recipe", **meta}))
    return out


def add_flag(group: argparse._ArgumentGroup, name: str, kind: type, meta: dict) -> None:
    """Unset flags stay None, so the recipe's (or the data config's) value is kept."""
    meta = {k: v for k, v in meta.items() if k != "group"}
    options = [n for n in typing.get_args(kind) if n is not type(None)] or [kind]
    kind = options[0]  # X | None -> X
    flag = "--" + name.replace("_", "-")
    if kind is bool:
        group.add_argument(flag, action="store_true", default=None, **meta)
    else:
        group.add_argument(flag, type=str if kind is Path else kind, **meta)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train",
        description="Train ST-Adapter (frozen CLIP ViT + temporal adapters) with a reference recipe.",
        epilog=recipes_table() + "\n" + EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "recipe",
        choices=sorted(RECIPES),
        help="which recipe to run (its defaults are listed below); the data comes from --dataset",
    )
    p.add_argument("--save-dir", required=True, help="output folder: log.jsonl, curves.png, checkpoints, final/")
    groups = {name: p.add_argument_group(title) for name, title in GROUP_TITLES.items()}
    groups["data"].add_argument(
        "--data-config",
        metavar="TOML",
        help="TOML file with train_root/train_list/val_root/val_list[/num_classes/class_names] in one table "
        "per dataset, picked by --dataset; default: $STADAPTER_DATA_CONFIG",
    )
    for name, kind, meta in flag_fields():
        add_flag(groups[meta["group"]], name, kind, meta)
    return p


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    from stadapter_deploy.settings import read_settings
    from stadapter_deploy.train.loop import run
    from stadapter_deploy.video.limits import DecodeLimits

    try:
        cfg = build_config(args.pop("recipe"), args.pop("save_dir"), args.pop("data_config"), **args)
        run(cfg, read_settings(DecodeLimits))
    except (STAdapterError, FileNotFoundError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; resume with --auto-resume", file=sys.stderr)
        return 130
    return 0
