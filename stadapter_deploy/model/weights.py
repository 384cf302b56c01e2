"""Readers for the weight formats users hold, converted to this package's parameter names.

- OpenAI CLIP TorchScript release files (ViT-B-16.pt, ViT-L-14.pt)
- plain state dicts (with or without `visual.` prefix / `state_dict` wrapper), open_clip style
- Hugging Face CLIP safetensors (CLIPModel or CLIPVisionModel)
- reference ST-Adapter training checkpoints (checkpoint-N.pth: trainable weights only)
- our own checkpoint: a directory with config.json + model.safetensors
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import NamedTuple

import torch

from ..errors import WeightsError
from .config import MLP_ACTIVATIONS, ModelConfig
from .torchscript import TorchScriptError, is_torchscript, read_torchscript_tensors

StateDict = dict[str, torch.Tensor]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CHECKPOINT_FORMAT = "stadapter-deploy/checkpoint-v1"

# CLIP keys that exist in release files but that the video model does not use.
UNUSED_CLIP_KEYS = ("proj",)


# ----------------------------------------------------------------------------- file sniffing


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"weight file not found: {path}")
    return path


def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def load_pickle(path: str | Path) -> dict:
    """torch.load with weights_only=True: a checkpoint from a stranger cannot run code. Whatever is wrong
    with the file, the error is one line of ours (never torch's advice to load it unsafely)."""
    path = _existing(path)
    if is_torchscript(path):
        raise WeightsError(f"{path} is a TorchScript archive, not a checkpoint; pass it as the CLIP backbone (--clip)")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's warnings about a file's pickle protocol
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, truncated zips, random bytes, objects that need code
        raise WeightsError(f"cannot read {path} as a PyTorch checkpoint: {_pickle_reason(e)}") from None
    if not isinstance(obj, dict):
        raise WeightsError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return obj


def _pickle_reason(e: Exception) -> str:
    """Why torch.load refused a file, in one line of our words."""
    found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", str(e))
    if found:
        return f"it holds Python objects ({found.group(1)}) beyond tensors and containers; a weight file needs none"
    return "it is not a PyTorch checkpoint file, or it is damaged or truncated"


def load_safetensors(path: str | Path) -> StateDict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = _existing(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"cannot read {path} as safetensors: {e}") from e


# ----------------------------------------------------------------------------- CLIP backbones


def load_clip_state_dict(path: str | Path) -> StateDict:
    """Read a CLIP vision backbone from any supported format, in our parameter names, float32."""
    path = _existing(path)
    if path.is_dir():  # a Hugging Face model folder; large models are sharded over several files
        shards = sorted(path.glob("*.safetensors"))
        if not shards:
            raise WeightsError(f"{path} is a directory without a .safetensors file")
        sd = {k: v for shard in shards for k, v in load_safetensors(shard).items()}
        sd = convert_clip_state_dict(sd, source=str(path))
        return {k: v.float() for k, v in sd.items()}
    if is_torchscript(path):
        sd = _load_torchscript(path)
    elif _is_safetensors(path):
        sd = load_safetensors(path)
    else:
        sd = load_pickle(path)
    sd = convert_clip_state_dict(sd, source=str(path))
    return {k: v.float() for k, v in sd.items()}


def _load_torchscript(path: Path) -> StateDict:
    """The tensors of OpenAI's TorchScript release files, read as data: the archive's code never runs."""
    try:
        return read_torchscript_tensors(path)
    except (TorchScriptError, pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile) as e:
        reason = str(e) if isinstance(e, TorchScriptError) else f"it is damaged ({type(e).__name__})"
        raise WeightsError(f"cannot read {path} as CLIP weights: {reason}") from None


def convert_clip_state_dict(sd: dict, source: str = "state dict") -> StateDict:
    """Normalize any CLIP state-dict layout to our names (OpenAI `visual` names without prefix)."""
    for wrapper in ("state_dict", "model"):
        if wrapper in sd and isinstance(sd[wrapper], dict):
            sd = sd[wrapper]
    if sd and all(k.startswith("module.") for k in sd):  # saved from a DDP wrapper (open_clip's training checkpoints)
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    if any(k.startswith(("vision_model.", "embeddings.", "encoder.layers.")) for k in sd):
        return _convert_hf(sd)
    for prefix in ("visual.", "image_encoder."):
        if any(k.startswith(prefix + "conv1.") for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    if "conv1.weight" not in sd:
        raise WeightsError(
            f"{source} does not look like a CLIP vision backbone (no `conv1.weight` / `visual.conv1.weight` / "
            f"`vision_model.*` keys; first keys: {list(sd)[:5]})"
        )
    return {k: v for k, v in sd.items() if torch.is_tensor(v)}


def _convert_hf(sd: StateDict) -> StateDict:
    """Hugging Face CLIPModel / CLIPVisionModel -> OpenAI names; q, k, v packed into in_proj."""
    sd = {k.removeprefix("vision_model."): v for k, v in sd.items() if not k.startswith("text_model.")}
    out = {
        "class_embedding": sd["embeddings.class_embedding"],
        "conv1.weight": sd["embeddings.patch_embedding.weight"],
        "positional_embedding": sd["embeddings.position_embedding.weight"],
    }
    renames = {"pre_layrnorm": "ln_pre", "post_layernorm": "ln_post"}
    for src, dst in renames.items():
        for p in ("weight", "bias"):
            out[f"{dst}.{p}"] = sd[f"{src}.{p}"]
    if "visual_projection.weight" in sd:
        out["proj"] = sd["visual_projection.weight"].t()
    layer_ids = sorted({int(m.group(1)) for k in sd if (m := re.match(r"encoder\.layers\.(\d+)\.", k))})
    for i in layer_ids:
        src, dst = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for p in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{p}"] = torch.cat([sd[f"{src}self_attn.{n}_proj.{p}"] for n in "qkv"])
            out[f"{dst}attn.out_proj.{p}"] = sd[f"{src}self_attn.out_proj.{p}"]
            out[f"{dst}ln_1.{p}"] = sd[f"{src}layer_norm1.{p}"]
            out[f"{dst}ln_2.{p}"] = sd[f"{src}layer_norm2.{p}"]
            out[f"{dst}mlp.c_fc.{p}"] = sd[f"{src}mlp.fc1.{p}"]
            out[f"{dst}mlp.c_proj.{p}"] = sd[f"{src}mlp.fc2.{p}"]
    return out


# open_clip's ViT-H/14, g/14, bigG/14 and e/14 have 16 heads of width 80, 88, 104 and 112; every OpenAI
# and Hugging Face CLIP ViT up to L/14 has heads of width 64. The file holds no head count.
HEADS_BY_WIDTH = {1280: 16, 1408: 16, 1664: 16, 1792: 16}


def infer_backbone_config(sd: StateDict, heads: int | None = None) -> dict:
    """Width, layers, heads, patch and resolution from tensor shapes.

    Resolution = sqrt(positional_embedding rows - 1) x patch (336 for L/14@336px). Heads are not in the
    shapes: `heads` when known (a Hugging Face config.json), else CLIP's width / 64 (HEADS_BY_WIDTH aside).
    """
    width, _, patch, _ = sd["conv1.weight"].shape
    rows = sd["positional_embedding"].shape[0]
    grid = math.isqrt(rows - 1)
    if grid * grid != rows - 1:
        raise WeightsError(
            f"positional_embedding has {rows} rows, not 1 class token + a square grid of patches: "
            "not a CLIP ViT this model can run"
        )
    layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
    heads = heads or HEADS_BY_WIDTH.get(width, max(1, width // 64))
    return dict(width=width, layers=layers, heads=heads, patch_size=patch, image_size=grid * patch)


HF_CLIP_TYPES = ("clip", "clip_vision_model")


class BackboneHints(NamedTuple):
    """What a config file beside the weights says that the tensor shapes cannot: None where it says nothing."""

    heads: int | None = None
    mlp_activation: str | None = None


def backbone_hints(path: str | Path) -> BackboneHints:
    """Heads and MLP activation from the config beside a weight file or in a model folder: a Hugging Face
    config.json (CLIP types only: our own checkpoint has a config.json too), else open_clip's
    open_clip_config.json. Without either, BackboneHints() and the caller assumes CLIP's QuickGELU."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    hf = _read_json(folder / "config.json")
    if hf is not None and hf.get("model_type") in HF_CLIP_TYPES:
        return _hf_hints(hf, folder / "config.json")
    open_clip = _read_json(folder / "open_clip_config.json")
    if open_clip is not None:
        return _open_clip_hints(open_clip)
    return BackboneHints()


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _hf_hints(config: dict, config_path: Path) -> BackboneHints:
    vision = config.get("vision_config") or config  # CLIPModel nests it; CLIPVisionModel does not
    activation = vision.get("hidden_act", "quick_gelu")
    if activation not in MLP_ACTIVATIONS:  # Hugging Face's names are ours; its "gelu" is the exact, erf one
        raise WeightsError(
            f"{config_path}: hidden_act is {activation!r}; this model computes {' or '.join(MLP_ACTIVATIONS)} "
            "only, so these weights would give wrong features"
        )
    heads = vision.get("num_attention_heads")
    return BackboneHints(heads if isinstance(heads, int) and heads > 0 else None, activation)


def _open_clip_hints(config: dict) -> BackboneHints:
    """open_clip's model_cfg: QuickGELU only where `quick_gelu` is true (its default is plain GELU); heads
    are width / head_width (head_width 64 unless given)."""
    model_cfg = config.get("model_cfg", config)
    vision = model_cfg.get("vision_cfg") if isinstance(model_cfg, dict) else None
    if not isinstance(vision, dict):
        return BackboneHints()
    width, head_width = vision.get("width"), vision.get("head_width", 64)
    ints = isinstance(width, int) and isinstance(head_width, int) and head_width > 0 and width % head_width == 0
    activation = "quick_gelu" if model_cfg.get("quick_gelu") else "gelu"
    return BackboneHints(width // head_width if ints else None, activation)


# ----------------------------------------------------------------------------- adapter checkpoints


_ADAPTER_KEY = re.compile(r"transformer\.resblocks\.(\d+)\.adapter_pre_(attn|mlp)\.fc1\.weight")


def load_adapter_checkpoint(path: str | Path) -> StateDict:
    """A reference checkpoint-N.pth (or any dict holding trainable weights under `model`)."""
    ckpt = load_pickle(path)
    sd = ckpt.get("model", ckpt)
    sd = {k.removeprefix("module."): v for k, v in sd.items() if torch.is_tensor(v)}
    if "fc.weight" not in sd:
        raise WeightsError(f"{path} has no `fc.weight`: not an ST-Adapter training checkpoint")
    return sd


def infer_adapter_config(sd: StateDict, layers: int) -> dict:
    """Adapter width, layer count and placement from adapter keys; classes from `fc`."""
    found: dict[int, set[str]] = {}
    width = None
    for k, v in sd.items():
        if m := _ADAPTER_KEY.fullmatch(k):
            found.setdefault(int(m.group(1)), set()).add(m.group(2))
            width = v.shape[0]
    cfg = dict(num_classes=sd["fc.weight"].shape[0])
    if not found:
        return cfg | dict(adapter_layers=0)
    blocks = sorted(found)
    placements = set.union(*found.values())
    if blocks != list(range(layers - len(blocks), layers)) or any(found[b] != placements for b in blocks):
        raise WeightsError(
            f"adapters sit in blocks {blocks} with placements { {b: sorted(found[b]) for b in blocks} }; "
            f"expected the same placement in the last N of {layers} blocks"
        )
    kernel_t = next(v.shape[2] for k, v in sd.items() if k.endswith(".conv.weight"))
    return cfg | dict(
        adapter_width=width,
        adapter_layers=len(blocks),
        adapter_kernel_t=kernel_t,
        adapter_pre_attn="attn" in placements,
        adapter_pre_mlp="mlp" in placements,
    )


# ----------------------------------------------------------------------------- our checkpoint format


def save_checkpoint(model: torch.nn.Module, path: str | Path, extra: dict | None = None) -> Path:
    """Write our format: a directory with config.json and full-weight model.safetensors."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg: ModelConfig = model.cfg
    meta = {"format": CHECKPOINT_FORMAT, "config": cfg.to_dict(), **(extra or {})}
    state = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = path / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp), metadata={"format": CHECKPOINT_FORMAT})
    tmp.replace(path / WEIGHTS_FILE)
    (path / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return path


class Checkpoint(NamedTuple):
    config: ModelConfig
    state: StateDict
    meta: dict  # the whole config.json: format, config, and what training wrote (preprocessing, class_names, ...)


def is_own_checkpoint(path: str | Path) -> bool:
    """Whether `path` is our format (its directory, its config.json or its model.safetensors), by the
    format its config.json names; a Hugging Face model folder, which also holds these two names, is not."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    meta = _read_json(folder / CONFIG_FILE)
    return isinstance(meta, dict) and meta.get("format") == CHECKPOINT_FORMAT and (folder / WEIGHTS_FILE).is_file()


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read our format from its directory, its config.json, or its model.safetensors."""
    path = _existing(path)
    folder = path if path.is_dir() else path.parent
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not config_path.exists() or not weights_path.exists():
        final = folder / "final"  # a training run's folder, or one of its checkpoint-N.pth
        if is_own_checkpoint(final) or (folder / "run.json").is_file():
            what = "a training checkpoint (for resuming)" if path.is_file() else "a training run's folder"
            where = f"is {final}" if is_own_checkpoint(final) else f"will be {final}, written when the run ends"
            raise WeightsError(f"{path} is {what}, not a trained model: the run's model {where}")
        if path.is_file() and path.suffix == ".pth":
            raise WeightsError(
                f"{path} is a .pth file, not a stadapter-deploy model folder: a reference ST-Adapter checkpoint "
                "loads with the CLIP weights it was trained on (--clip CLIP --adapter FILE)"
            )
        raise WeightsError(f"{path} is not a stadapter-deploy model: its folder needs {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        meta = json.loads(config_path.read_text())
        cfg = ModelConfig.from_dict(meta["config"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise WeightsError(f"{config_path} is not a valid checkpoint config: {e}") from e
    return Checkpoint(cfg, load_safetensors(weights_path), meta)
