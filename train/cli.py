"""`python -m train {k400,ssv2,synthetic}`: argument parsing over stadapter_deploy.train.

Defaults come from the recipe (stadapter_deploy/recipes.py); every flag left unset keeps the
recipe's value. The same command runs under `torchrun --nproc_per_node N -m train ...`.
"""

from __future__ import annotations

import argparse
import sys

from stadapter_deploy.errors import STAdapterError
from stadapter_deploy.recipes import RECIPES


def recipes_table() -> str:
    rows = ["recipe defaults (override any of them with the flags above):"]
    for name, r in RECIPES.items():
        p = r.preprocessing
        views = f"{p.spatial_views}x{p.temporal_views} views"
        rows.append(
            f"  {name:9s} preset {r.preset}, {r.num_classes} classes, {p.num_frames} frames, rate {p.sampling_rate}, "
            f"{views}, batch {r.total_batch}, {r.epochs} epochs ({r.warmup_epochs:g} warmup), "
            f"lr {r.lr_per_256:g}/256, wd {r.weight_decay:g}, augment {r.train_augment}"
        )
    return "\n".join(rows)


EXAMPLES = """
examples:
  python -m train synthetic --save-dir runs/synthetic
  python -m train k400 --clip ViT-B-16.pt --data-config data.toml --save-dir runs/k400 --auto-resume
  torchrun --nproc_per_node 8 -m train k400 --clip ViT-B-16.pt --data-config data.toml --save-dir runs/k400
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train",
        description="Train ST-Adapter (frozen CLIP ViT + temporal adapters) with a reference recipe.",
        epilog=recipes_table() + "\n" + EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dataset", choices=sorted(RECIPES), help="which recipe to run (its defaults are listed below)")
    p.add_argument("--save-dir", required=True, help="output folder: log.jsonl, curves.png, checkpoints, final/")

    g = p.add_argument_group("data (from flags, or a TOML file: see README)")
    g.add_argument(
        "--data-config",
        metavar="TOML",
        help="TOML file with train_root/train_list/val_root/val_list[/num_classes/class_names], in a table "
        "named after the dataset; default: $STADAPTER_DATA_CONFIG",
    )
    g.add_argument("--train-root", help="folder the training list's paths are relative to")
    g.add_argument("--train-list", help="training list file, one '<relative path> <label>' per line")
    g.add_argument("--val-root", help="folder the validation list's paths are relative to")
    g.add_argument("--val-list", help="validation list file, same format")
    g.add_argument("--num-classes", type=int, help="number of classes (default: the recipe's)")
    g.add_argument("--class-names", help="file with one class name per line (default: the shipped list)")
    g.add_argument(
        "--data-root",
        help="synthetic only: where the generated dataset lives; generated when absent (default runs/synthetic-data)",
    )

    g = p.add_argument_group("model")
    g.add_argument(
        "--clip",
        help="CLIP backbone weights: OpenAI .pt, open_clip/HF state dict or safetensors "
        "(synthetic: random frozen backbone when unset)",
    )
    g.add_argument("--preset", help="model preset (default: the recipe's, e.g. vit_b16_adapter12x384)")
    g.add_argument(
        "--pretrain",
        help="start the adapters from this checkpoint (reference .pth or our final/ dir); the head starts fresh",
    )
    g.add_argument(
        "--no-adapters",
        action="store_true",
        default=None,
        help="no adapters: frozen backbone + trained linear head only (the ablation)",
    )

    g = p.add_argument_group("recipe overrides")
    g.add_argument("--num-frames", type=int, help="frames per clip")
    g.add_argument("--sampling-rate", type=int, help="frame stride; 0 = uniform over the whole video")
    g.add_argument("--spatial-views", type=int, help="eval spatial crops (1 or 3)")
    g.add_argument("--temporal-views", type=int, help="eval temporal clips")
    g.add_argument(
        "--train-augment",
        choices=["k400", "ssv2", "none"],
        help="training augmentation: k400 (jitter, crop, flip), ssv2 (RRC + RandAugment), none",
    )
    g.add_argument(
        "--total-batch", type=int, help="effective batch per optimizer step (= processes x --batch-size x accumulation)"
    )
    g.add_argument("--epochs", type=int, help="training epochs")
    g.add_argument("--warmup-epochs", type=float, help="linear warmup epochs (then half-cosine to 0)")
    g.add_argument("--lr-per-256", type=float, help="learning rate per 256 clips; lr = this x total batch / 256")
    g.add_argument("--weight-decay", type=float, help="AdamW weight decay (never on biases)")

    g = p.add_argument_group("run")
    g.add_argument(
        "--batch-size",
        type=int,
        help="clips per process per forward pass; gradient accumulation makes up the total batch "
        "(default: the largest divisor of the per-process share that is <= 64)",
    )
    g.add_argument("--eval-batch-size", type=int, help="videos per process per eval pass (default: from batch size)")
    g.add_argument(
        "--precision",
        choices=["auto", "fp32", "fp16", "bf16"],
        help="auto (default) = fp16 with loss scaling and a half backbone on CUDA, fp32 on CPU",
    )
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default auto: CUDA when present")
    g.add_argument("--num-workers", type=int, help="DataLoader workers per process (default 4)")
    g.add_argument("--seed", type=int, help="random seed (default 0)")
    g.add_argument("--eval-every", type=int, help="evaluate every N epochs, and always after the last (default 1)")
    g.add_argument("--keep-last", type=int, help="keep the newest K checkpoints, delete older (default 3; 0 = all)")
    g.add_argument(
        "--auto-resume",
        action="store_true",
        default=None,
        help="continue from the newest valid checkpoint in --save-dir, if any",
    )
    g.add_argument("--resume", help="continue from this checkpoint-N.pth")
    g.add_argument(
        "--eval-only",
        action="store_true",
        default=None,
        help="only evaluate (the model from --resume/--auto-resume); writes eval.json",
    )
    g.add_argument(
        "--stop-after-epochs",
        type=int,
        help="leave after this many epochs as if killed (the schedule still spans --epochs)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    from stadapter_deploy.train.config import build_config
    from stadapter_deploy.train.loop import run

    try:
        cfg = build_config(args.pop("dataset"), args.pop("save_dir"), args.pop("data_config"), **args)
        run(cfg)
    except (STAdapterError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; resume with --auto-resume", file=sys.stderr)
        return 130
    return 0
