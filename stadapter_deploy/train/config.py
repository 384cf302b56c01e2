"""TrainConfig: a recipe (stadapter_deploy/recipes.py), then the data config file (TOML), then flags.

The recipe (`python -m train k400`) gives the hyperparameters; the dataset (`--dataset NAME`, default
the recipe's name) picks the table of the data config that gives the data: roots, lists, num_classes
and class names. Any recipe runs on any dataset.

Each setting is declared once, as a dataclass field: the recipe's in `Recipe` / `Preprocessing`,
the rest in `TrainConfig` below, whose field metadata carries the `--flag` help (train/cli.py
generates the command line from these fields). Values are checked in `__post_init__`; only the
filesystem is checked later, by `check_paths`, once a synthetic dataset has been generated.

A data config is a small TOML file; one file can hold several datasets, one table each, named as
`--dataset` names them:

    [k400]
    train_root = "/data/k400/train"      # folder the list's paths are relative to
    train_list = "/data/k400/train.txt"  # lines "<relative path> <label>"
    val_root = "/data/k400/val"
    val_list = "/data/k400/val.txt"
    num_classes = 400                    # optional; the recipe's count by default
    class_names = "/data/k400/classes.txt"  # optional; one name per line

    [ucf101]                             # python -m train k400 --dataset ucf101 ...
    ...
    num_classes = 101                    # required for a dataset that is not a recipe's own

A file without tables holds one dataset, its keys at the top level. Relative paths are relative to the file.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..model.config import MLP_ACTIVATIONS
from ..preprocessing import Preprocessing
from ..recipes import RECIPES, Recipe, get_recipe
from ..video.augment import AUGMENTS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DATA_CONFIG_ENV = "STADAPTER_DATA_CONFIG"
DATA_KEYS = ("train_root", "train_list", "val_root", "val_list")
PATH_KEYS = (*DATA_KEYS, "class_names")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
DEVICES = ("auto", "cpu", "cuda")
MAX_AUTO_BATCH = 64  # per process, as the reference recipes run (3 x 64, 4 x 64)
MAX_AUTO_WORKERS = 4


def option(default=None, *, factory=None, help: str, group: str = "run", **argparse_kwargs):
    """A TrainConfig field that is also a command-line flag; `argparse_kwargs` such as choices=."""
    meta = {"help": help, "group": group, **argparse_kwargs}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def default_num_workers() -> int:
    """DataLoader workers per process: the cores this process may use, shared by the local processes."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return min(MAX_AUTO_WORKERS, cores // max(local_processes, 1))


# Flags for the recipe's own fields (Recipe and Preprocessing live outside training, so their help
# is kept here). Preprocessing's size, mean and std are not flags: they follow the model.
RECIPE_FLAGS: dict[str, dict] = {
    "preset": {
        "help": "model preset; the CLIP file must then fit it (default: with --clip the backbone the file "
        "holds, with the adapters of the recipe's preset in every block; without --clip the recipe's preset)",
        "group": "model",
    },
    "random_backbone": {
        "help": "allow training without --clip, on a randomly initialized frozen backbone (experiments, tests; "
        "the synthetic recipe's default). k400 and ssv2 refuse to run without --clip otherwise",
        "group": "model",
    },
    "num_classes": {
        "help": "number of classes (default: the dataset's table, else the known count of k400, ssv2, synthetic)"
    },
    "num_frames": {"help": "frames per clip"},
    "sampling_rate": {"help": "frame stride; 0 = uniform over the whole video"},
    "spatial_views": {"help": "eval spatial crops (1 or 3)"},
    "temporal_views": {"help": "eval temporal clips"},
    "train_augment": {
        "help": "training augmentation: k400 (jitter, crop, flip), ssv2 (RRC + RandAugment), none",
        "choices": AUGMENTS,
    },
    "total_batch": {"help": "effective batch per optimizer step (= processes x --batch-size x accumulation)"},
    "epochs": {"help": "training epochs"},
    "warmup_epochs": {"help": "linear warmup epochs (then half-cosine to 0)"},
    "lr_per_256": {"help": "learning rate per 256 clips; lr = this x total batch / 256"},
    "weight_decay": {"help": "AdamW weight decay (never on biases)"},
}
PREPROCESSING_FLAGS = ("num_frames", "sampling_rate", "spatial_views", "temporal_views")


@dataclass
class TrainConfig:
    save_dir: Path
    recipe: Recipe  # hyperparameters and preprocessing (docs/method.md); every value can be overridden
    # data
    dataset: str | None = option(
        help="which table of the data config holds the data (default: the one named after the recipe); "
        "recorded in final/config.json and the first line of the output",
        group="data",
        metavar="NAME",
    )
    train_root: Path | None = option(help="folder the training list's paths are relative to", group="data")
    train_list: Path | None = option(help="training list file, one '<relative path> <label>' per line", group="data")
    val_root: Path | None = option(help="folder the validation list's paths are relative to", group="data")
    val_list: Path | None = option(help="validation list file, same format", group="data")
    class_names: Path | None = option(
        help="file with one class name per line (default: the shipped list)", group="data"
    )
    data_root: Path | None = option(
        help="the synthetic dataset only: where it lives; generated when absent (default runs/synthetic-data)",
        group="data",
    )
    # model
    clip: Path | None = option(
        help="CLIP ViT weights for the frozen backbone: OpenAI .pt (B/32, B/16, L/14, L/14@336px), open_clip "
        "state dict, Hugging Face safetensors (file or folder); without --preset the architecture and input size "
        "follow the file. Required for k400/ssv2 (see --random-backbone)",
        group="model",
    )
    clip_activation: str | None = option(
        help="the backbone's MLP activation, needed where no config beside the --clip file says it (a Hugging "
        "Face config.json or open_clip_config.json does) and taken over one that does: quick_gelu (default: "
        "OpenAI's, open_clip's -quickgelu) or gelu (open_clip's LAION ViTs without -quickgelu); the weights alone "
        "cannot tell",
        group="model",
        choices=MLP_ACTIVATIONS,
    )
    adapter_width: int | None = option(help="adapter width (default: the recipe's; 384 for k400, ssv2)", group="model")
    adapter_layers: int | None = option(help="adapters in the last N blocks only (default: every block)", group="model")
    pretrain: Path | None = option(
        help="start the adapters from this checkpoint (reference .pth or our final/ dir); the head starts fresh",
        group="model",
    )
    no_adapters: bool = option(
        False, help="no adapters: frozen backbone + trained linear head only (the ablation)", group="model"
    )
    # run
    batch_size: int | None = option(
        help="clips per process per forward pass; gradient accumulation makes up the total batch "
        "(default: the largest divisor of the per-process share that is <= 64)"
    )
    eval_batch_size: int | None = option(help="videos per process per eval pass (default: from batch size)")
    precision: str = option(
        "auto",
        help="auto (default) = fp16 with loss scaling and a half backbone on CUDA, fp32 on CPU",
        choices=PRECISIONS,
    )
    device: str = option("auto", help="default auto: CUDA when present", choices=DEVICES)
    num_workers: int = option(
        factory=default_num_workers,
        help=f"DataLoader workers per process (default: the CPU cores this process may use, divided by the "
        f"processes on this machine, at most {MAX_AUTO_WORKERS})",
    )
    seed: int = option(0, help="random seed (default 0)")
    eval_every: int = option(1, help="evaluate every N epochs, and always after the last (default 1)")
    keep_last: int = option(3, help="keep the newest K checkpoints, delete older (default 3; 0 = all)")
    auto_resume: bool = option(
        False,
        help="continue from the newest readable checkpoint in --save-dir whose settings are this run's (a torchrun "
        "restart always does); without one, start at epoch 1 and say so",
    )
    resume: Path | None = option(help="continue from this checkpoint-N.pth")
    overwrite: bool = option(
        False,
        help="start over in a --save-dir that holds another run's files (or this run's checkpoints): delete them "
        "first. Without it such a folder is refused, naming what differs",
    )
    dist_timeout: float = option(
        600.0,
        help="under torchrun: seconds a process waits for the others, at set-up and in every collective, "
        "before it fails (default 600)",
        metavar="SECONDS",
    )
    eval_only: bool = option(False, help="only evaluate (the model from --resume/--auto-resume); writes eval.json")
    # leave the loop early, as a kill would (resume tests, time limits)
    stop_after_epochs: int | None = option(
        help="leave after this many epochs as if killed (the schedule still spans --epochs)"
    )
    preset_given: bool = False  # --preset was set: the CLIP file must fit it (else the backbone follows the file)

    def __post_init__(self) -> None:
        """Everything that can be checked without touching the disk; all problems in one message."""
        if self.dataset is None:
            self.dataset = self.recipe.dataset
        problems = []
        for key in DATA_KEYS:
            if getattr(self, key) is None:
                flag = "--" + key.replace("_", "-")
                problems.append(
                    f'{key} is not set: pass {flag} PATH, or put {key} = "..." in the [{self.dataset}] table '
                    f"of a TOML data config given by --data-config FILE or ${DATA_CONFIG_ENV}"
                )
        r = self.recipe
        positive = {"num_classes": r.num_classes, "total_batch": r.total_batch, "epochs": r.epochs}
        positive |= {"eval_every": self.eval_every}
        problems += [f"{k} must be >= 1, got {v}" for k, v in positive.items() if v < 1]
        if r.warmup_epochs < 0 or r.lr_per_256 <= 0 or r.weight_decay < 0:
            problems.append("need warmup_epochs >= 0, lr_per_256 > 0 and weight_decay >= 0")
        if r.train_augment not in AUGMENTS:
            problems.append(f"train_augment must be one of {AUGMENTS}, got {r.train_augment!r}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.device not in DEVICES:
            problems.append(f"device must be one of {DEVICES}, got {self.device!r}")
        for key in ("batch_size", "eval_batch_size"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                problems.append(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.num_workers < 0:
            problems.append(f"num_workers must be >= 0, got {self.num_workers}")
        if self.resume is not None and self.auto_resume:
            problems.append("pass either --resume PATH or --auto-resume, not both")
        if self.overwrite and (self.auto_resume or self.resume is not None):
            problems.append("--overwrite starts over: it goes with neither --auto-resume nor --resume")
        if self.dist_timeout <= 0:
            problems.append(f"dist_timeout must be > 0 seconds, got {self.dist_timeout}")
        if self.adapter_width is not None and self.adapter_width < 1:
            problems.append(f"adapter_width must be >= 1, got {self.adapter_width}")
        if self.adapter_layers is not None and (self.adapter_layers < 0 or self.no_adapters):
            problems.append(f"adapter_layers must be >= 0 and not with --no-adapters, got {self.adapter_layers}")
        if self.clip is None and not r.random_backbone:
            problems.append(
                f"the {r.dataset} recipe trains adapters on a pretrained backbone: pass --clip FILE (CLIP weights, "
                "e.g. ViT-B-16.pt), or --random-backbone to train on a random one on purpose"
            )
        refuse(problems)

    @property
    def preprocessing(self) -> Preprocessing:
        return self.recipe.preprocessing

    def model_overrides(self) -> dict:
        """What the flags set on the model: classes and adapters, over the preset or the inferred backbone."""
        out = {"num_classes": self.recipe.num_classes}
        if self.clip_activation is not None:
            out["mlp_activation"] = self.clip_activation
        if self.adapter_width is not None:
            out["adapter_width"] = self.adapter_width
        if self.adapter_layers is not None:
            out["adapter_layers"] = self.adapter_layers
        if self.no_adapters:
            out["adapter_layers"] = 0
        return out

    def to_dict(self) -> dict:
        """JSON/torch-safe view (paths as strings; the recipe as nested dicts)."""
        values = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}
        values["recipe"]["preprocessing"] = self.preprocessing.to_dict()
        return values


def refuse(problems: list[str]) -> None:
    """One problem: one line. Several: one per line."""
    if len(problems) == 1:
        raise ConfigError(f"bad training configuration: {problems[0]}")
    if problems:
        raise ConfigError("bad training configuration:\n  " + "\n  ".join(problems))


def read_data_config(path: str | Path, dataset: str, required: bool = True) -> dict:
    """The [dataset] table of a TOML data config (or, in a file without tables, its top-level keys),
    paths made absolute. A missing table is refused with the names the file holds, or is empty when
    not `required` (the synthetic dataset, generated when absent)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"data config {path} does not exist (set by --data-config or ${DATA_CONFIG_ENV})")
    try:
        doc = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"data config {path} is not valid TOML: {e}") from None
    tables = {k: v for k, v in doc.items() if isinstance(v, dict)}
    loose = sorted(set(doc) - set(tables))
    if tables and loose:
        raise ConfigError(f"data config {path}: keys {loose} sit outside a table; put them in their dataset's table")
    if not tables:
        table = doc  # a single-dataset file
    elif dataset in tables:
        table = tables[dataset]
    elif required:
        raise ConfigError(
            f"data config {path} has no [{dataset}] table; it holds {', '.join(sorted(tables))}: "
            "pick one with --dataset NAME"
        )
    else:
        table = {}
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


def build_config(
    recipe_name: str, save_dir: str | Path, data_config: str | Path | None = None, **overrides
) -> TrainConfig:
    """Recipe defaults <- the dataset's table of the data config file (explicit, else
    ${STADAPTER_DATA_CONFIG}) <- overrides.

    Overrides are flat (dataset="ucf101", epochs=3, num_frames=16, train_list=...); those set to None are
    ignored, so argparse namespaces pass straight through.
    """
    recipe = get_recipe(recipe_name)
    dataset = overrides.get("dataset") or recipe_name
    values = {"dataset": dataset}
    data_config = data_config or os.environ.get(DATA_CONFIG_ENV) or None
    if data_config:
        values |= read_data_config(data_config, dataset, required=dataset != "synthetic")
    values |= {k: v for k, v in overrides.items() if v is not None}
    for key in (*PATH_KEYS, "data_root", "clip", "pretrain", "resume"):
        if values.get(key) is not None:
            values[key] = Path(values[key]).expanduser()
    if "num_classes" not in values and dataset != recipe_name:
        if dataset not in RECIPES:  # the recipe's count belongs to the recipe's own dataset
            raise ConfigError(
                f"dataset {dataset!r} has no num_classes: put num_classes = N in its [{dataset}] table "
                f"or pass --num-classes N"
            )
        values["num_classes"] = RECIPES[dataset].num_classes  # a known dataset under another recipe
    values["preset_given"] = "preset" in values
    if dataset == "synthetic":
        root = values.get("data_root") or Path("runs/synthetic-data")
        values["data_root"] = root
        values.setdefault("train_root", root)
        values.setdefault("val_root", root)
        values.setdefault("train_list", root / "train.txt")
        values.setdefault("val_list", root / "val.txt")
        if {values["train_list"], values["val_list"]} <= {root / "train.txt", root / "val.txt"}:
            values.setdefault("class_names", root / "classes.txt")  # else the shipped synthetic names
    pre = {k: values.pop(k) for k in PREPROCESSING_FLAGS if k in values}
    recipe_keys = set(RECIPE_FLAGS) - set(PREPROCESSING_FLAGS)
    changes = {k: values.pop(k) for k in recipe_keys if k in values}
    try:
        recipe = recipe.replace(preprocessing=recipe.preprocessing.replace(**pre), **changes)
        return TrainConfig(save_dir=Path(save_dir), recipe=recipe, **values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:  # an unknown option; Preprocessing's own checks
        raise ConfigError(f"bad training option: {e}") from None


def check_paths(cfg: TrainConfig) -> None:
    """The files and folders the config names exist (run once the synthetic data is generated)."""
    problems = []
    for key in DATA_KEYS:
        value, flag = getattr(cfg, key), "--" + key.replace("_", "-")
        if key.endswith("_list") and not value.is_file():
            problems.append(f"{key} {value} does not exist (set by {flag} or the data config)")
        elif key.endswith("_root") and not value.is_dir():
            problems.append(f"{key} {value} is not a folder (set by {flag} or the data config)")
    for key in ("clip", "pretrain", "resume", "class_names"):
        value = getattr(cfg, key)
        if value is not None and not value.exists():
            problems.append(f"{key} {value} does not exist")
    from ..model.weights import is_own_checkpoint  # torch: not for --help

    if cfg.clip is not None and cfg.clip.exists() and is_own_checkpoint(cfg.clip):
        model = cfg.clip if cfg.clip.is_dir() else cfg.clip.parent
        problems.append(
            f"--clip {cfg.clip} is a model trained with this project, not CLIP weights: start from its adapters "
            f"with --pretrain {model}, or export it with stadapter-export --checkpoint {model}"
        )
    refuse(problems)


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
