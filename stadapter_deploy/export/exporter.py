"""Trained model -> model bundle: weights, ONNX (fp32, optional fp16), optional TensorRT plan, parity, manifest.

`load_source` turns the user's files into a model plus its labels and preprocessing; `export_bundle`
writes the bundle into a temporary folder and moves it into place only when every step (and, unless
verify=False, every parity gate) has passed.
"""

from __future__ import annotations

import datetime
import platform
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import hardware
from ..errors import BundleError
from ..labels import placeholder_labels, read_labels
from ..model import build_model, save_checkpoint
from ..model.config import backbone_name
from ..model.weights import CONFIG_FILE, WEIGHTS_FILE, read_checkpoint
from ..preprocessing import Preprocessing
from ..progress import progress_bar
from ..recipes import class_names, get_recipe
from ..runtime import bundle as B
from .onnx_export import DEFAULT_CONV_FORM, DEFAULT_OPSET, count_ops, export_onnx, external_data_file
from .parity import check_artifact, check_inputs, reference_outputs
from .quantize import Int8Recipe
from .tensorrt_build import DEFAULT_TIMING_CACHE, BatchProfile

ONNX_FILE = "model.onnx"
ONNX_FP16_FILE = "model.fp16.onnx"
ONNX_INT8_FILE = "model.int8.onnx"


class ParityError(BundleError):
    """An exported artifact disagrees with the fp32 PyTorch model beyond the gate."""


@dataclass
class ExportSource:
    model: torch.nn.Module
    labels: list[str]
    preprocessing: Preprocessing
    model_name: str
    dataset: str | None
    origin: dict  # where the weights and labels came from, for the manifest
    extra: dict = field(default_factory=dict)  # recipe / class_names, kept in the bundle's config.json


@dataclass
class ExportOptions:
    fp16: bool = False
    int8: bool = False
    trt: bool = False
    verify: bool = True
    overwrite: bool = False
    opset: int = DEFAULT_OPSET
    conv_form: str = DEFAULT_CONV_FORM
    exporter: str = "torchscript"
    trt_profile: BatchProfile = field(default_factory=BatchProfile)
    timing_cache: Path | None = DEFAULT_TIMING_CACHE
    check_videos: int = 3
    check_random: int = 2
    progress: bool = True
    int8_recipe: Int8Recipe = field(default_factory=Int8Recipe)  # how --int8 quantizes (quantize.py)


@dataclass
class ExportResult:
    path: Path
    manifest: dict
    trt_missing: str | None = None  # set when --trt was asked for but TensorRT or a GPU is missing


# ----------------------------------------------------------------------------- inputs


def load_source(
    checkpoint: str | Path | None = None,
    clip: str | Path | None = None,
    adapter: str | Path | None = None,
    preset: str | None = None,
    clip_activation: str | None = None,
    dataset: str | None = None,
    labels_file: str | Path | None = None,
    name: str | None = None,
) -> ExportSource:
    """Build the model from our checkpoint dir or a CLIP + reference adapter checkpoint pair, with labels."""
    if checkpoint is not None and (clip is not None or adapter is not None):
        raise ValueError("pass either --checkpoint or --clip/--adapter, not both")
    if checkpoint is None and (clip is None or adapter is None):
        raise ValueError("pass --checkpoint DIR, or both --clip FILE and --adapter checkpoint-N.pth")
    if dataset is not None:
        get_recipe(dataset)  # unknown names fail here, with the choices
    extra: dict = {}
    if checkpoint is not None:
        ckpt = read_checkpoint(checkpoint)
        model = build_model(checkpoint=ckpt)
        extra = {k: ckpt.meta[k] for k in ("dataset", "preprocessing", "class_names") if k in ckpt.meta}
        origin = {"checkpoint": str(Path(checkpoint).absolute())}
    else:
        told = {"mlp_activation": clip_activation} if clip_activation else {}
        model = build_model(preset, clip=clip, adapter=adapter, **told)
        origin = {"clip": str(Path(clip).absolute()), "adapter": str(Path(adapter).absolute())}
    cfg = model.cfg
    dataset = extra.get("dataset", dataset)
    preprocessing = source_preprocessing(cfg, extra, dataset)
    labels, labels_from = resolve_labels(cfg.num_classes, labels_file, extra.get("class_names"), dataset)
    origin["labels"] = labels_from
    if name is None:
        kinds = int(cfg.adapter_pre_attn) + int(cfg.adapter_pre_mlp)
        name = f"{backbone_name(cfg)} ST-Adapter {cfg.adapter_layers * kinds}x{cfg.adapter_width}"
        name += f" ({dataset})" if dataset else ""
    return ExportSource(model.eval(), labels, preprocessing, name, dataset, origin, extra)


def source_preprocessing(cfg, extra: dict, dataset: str | None) -> Preprocessing:
    """The checkpoint's own preprocessing; else the dataset's recipe; else 8 uniform frames. The size is
    always the model's."""
    if "preprocessing" in extra:
        return Preprocessing.from_dict(extra["preprocessing"]).replace(size=cfg.image_size)
    if dataset is not None:
        return get_recipe(dataset).preprocessing.replace(size=cfg.image_size)
    return Preprocessing(size=cfg.image_size)


def resolve_labels(
    num_classes: int, labels_file, checkpoint_names: list[str] | None, dataset: str | None
) -> tuple[list[str], str]:
    """(labels, where they came from): --labels, the checkpoint, the dataset preset, or class_<i>."""
    if labels_file is not None:
        return read_labels(labels_file, num_classes, error=BundleError), str(labels_file)
    if checkpoint_names and len(checkpoint_names) == num_classes:
        return list(checkpoint_names), "checkpoint"
    if dataset is not None:
        try:
            names = class_names(dataset)
        except ValueError:
            names = []
        if len(names) == num_classes:
            return names, f"dataset preset {dataset}"
    return placeholder_labels(num_classes), "generated"


# ----------------------------------------------------------------------------- export


def versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("onnx", "onnxruntime", "tensorrt"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            out[mod] = None
    return out


def export_bundle(source: ExportSource, out: str | Path, options: ExportOptions | None = None) -> ExportResult:
    """Write the bundle for `source` at `out`. Raises ParityError (nothing written) when a gate fails."""
    options = options or ExportOptions()
    from ..runtime.runners.trt_runner import tensorrt_missing

    model, pre = source.model.float().eval(), source.preprocessing
    cfg = model.cfg
    trt_missing = tensorrt_missing() if options.trt else None
    build_trt = options.trt and not trt_missing
    write_fp16 = options.fp16 or build_trt  # the engine is built from the fp16 ONNX
    steps = ["weights", "onnx fp32"] + ["onnx fp16"] * write_fp16 + ["onnx int8"] * options.int8
    steps += ["tensorrt"] * build_trt
    steps += ["parity"] * options.verify
    bar = progress_bar(len(steps), "export", enabled=options.progress, unit="step")
    with B.BundleWriter(out, overwrite=options.overwrite) as w:
        tmp = w.tmp
        bar.set_postfix_str("weights")
        save_checkpoint(model, tmp, extra={**source.extra, "preprocessing": pre.to_dict()})
        (tmp / B.LABELS_FILE).write_text("\n".join(source.labels) + "\n", encoding="utf-8")
        artifacts = [B.artifact_entry(tmp, WEIGHTS_FILE, backend="torch", precision="fp32", extra_files=[CONFIG_FILE])]
        bar.update()

        bar.set_postfix_str("onnx fp32")
        onnx_fields = dict(opset=options.opset, temporal_conv=options.conv_form, exporter=options.exporter)
        artifacts.append(_onnx_artifact(model, tmp, ONNX_FILE, "fp32", pre, options, onnx_fields))
        bar.update()
        if write_fp16:
            bar.set_postfix_str("onnx fp16")
            artifacts.append(_onnx_artifact(model, tmp, ONNX_FP16_FILE, "fp16", pre, options, onnx_fields))
            bar.update()
        if options.int8:
            bar.set_postfix_str("onnx int8")
            artifacts.append(_int8_artifact(tmp, onnx_fields, options.int8_recipe))
            bar.update()
        if build_trt:
            bar.set_postfix_str("tensorrt")
            artifacts.append(_trt_artifact(tmp, pre, options))
            bar.update()

        manifest = make_manifest(source, cfg, tmp, artifacts)
        if options.verify:
            bar.set_postfix_str("parity")
            verify_bundle(model, B.Bundle(tmp, manifest, source.labels, cfg, pre), options)
            bar.update()
        bar.close()
        (tmp / B.README_FILE).write_text(model_card(manifest))
        path = w.commit(manifest)
    return ExportResult(path=path, manifest=manifest, trt_missing=trt_missing)


def _onnx_artifact(model, folder: Path, name: str, precision: str, pre, options: ExportOptions, fields) -> dict:
    path = export_onnx(
        model,
        folder / name,
        opset=options.opset,
        fp16=precision == "fp16",
        form=options.conv_form,
        exporter=options.exporter,
        num_frames=pre.num_frames,
    )
    data = external_data_file(path)
    ops = count_ops(path)
    return B.artifact_entry(
        folder,
        name,
        backend="onnxruntime",
        precision=precision,
        extra_files=[data.name] if data else [],
        layer_norm_nodes=ops.get("LayerNormalization", 0),
        **fields,
    )


def _int8_artifact(folder: Path, fields: dict, recipe: Int8Recipe) -> dict:
    from .quantize import quantize_int8

    if recipe.method == "static":
        raise ValueError("the exporter writes dynamic int8 only (static needs calibration clips)")
    summary = quantize_int8(folder / ONNX_FILE, folder / ONNX_INT8_FILE, recipe=recipe)
    data = external_data_file(folder / ONNX_INT8_FILE)
    return B.artifact_entry(
        folder,
        ONNX_INT8_FILE,
        backend="onnxruntime",
        precision="int8",
        extra_files=[data.name] if data else [],
        quantization=summary,
        **fields,
    )


def _trt_artifact(folder: Path, pre: Preprocessing, options: ExportOptions) -> dict:
    import tensorrt as trt

    from ..hardware import gpu_name
    from .tensorrt_build import build_engine, plan_name

    gpu = gpu_name()
    plan = folder / plan_name(gpu, trt.__version__)
    build_engine(folder / ONNX_FP16_FILE, plan, pre.clip_shape, options.trt_profile, options.timing_cache)
    p = options.trt_profile
    return B.artifact_entry(
        folder,
        plan.name,
        backend="tensorrt",
        precision="fp16",
        batch=(p.min, p.max),
        profile={"min": p.min, "opt": p.opt, "max": p.max},
        gpu=gpu,
        tensorrt_version=trt.__version__,
        built_from=ONNX_FP16_FILE,
        network="strongly typed",
    )


def make_manifest(source: ExportSource, cfg, folder: Path, artifacts: list[dict]) -> dict:
    return {
        "schema_version": B.SCHEMA_VERSION,
        "model_name": source.model_name,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": cfg.to_dict(),
        "dataset": source.dataset,
        "labels": B.file_entry(folder, B.LABELS_FILE),
        "num_classes": cfg.num_classes,
        "preprocessing": source.preprocessing.to_dict(),
        "artifacts": artifacts,
        "parity": None,  # filled by verify_bundle; None = exported with --no-verify
        "source": source.origin,
        "versions": versions(),
    }


def verify_bundle(model: torch.nn.Module, bundle: B.Bundle, options: ExportOptions) -> dict:
    """Run every artifact through its real backend on the check inputs; figures into the manifest."""
    from ..runtime.predictor import load_predictor

    inputs = check_inputs(bundle.preprocessing, options.check_videos, options.check_random)
    reference = reference_outputs(model, inputs)
    results, failures = {}, []
    for artifact in bundle.artifacts:
        backend, precision = artifact["backend"], artifact["precision"]
        device = "cuda" if backend == "tensorrt" else "cpu"
        predictor = load_predictor(
            bundle,
            backend=backend,
            device=None if backend == "tensorrt" else device,
            precision=None if backend == "tensorrt" else precision,
        )
        figures = check_artifact(predictor.predict_with_features, reference, inputs, precision)
        results[artifact["file"]] = figures
        artifact["parity"] = figures
        failures += [f"{artifact['file']} ({predictor.backend}, {precision}): {f}" for f in figures["failures"]]
    bundle.manifest["parity"] = {
        "reference": "torch fp32 on the CPU",
        "check_clips": int(len(inputs.clips)),
        "random_clips": int(len(inputs.random)),
        # the CPU the gate ran on: int8 figures hold on every CPU whose int8 sums are exact (ort_runner.py)
        "cpu": {"kind": hardware.cpu_kind(), "flags": hardware.simd_flags()},
        "passed": not failures,
    }
    if failures:
        raise ParityError("parity gate failed, no bundle written:\n  " + "\n  ".join(failures))
    return results


def model_card(manifest: dict) -> str:
    cfg, pre = manifest["config"], manifest["preprocessing"]
    rows = []
    for a in manifest["artifacts"]:
        par = (a.get("parity") or {}).get("clips")
        feat = (a.get("parity") or {}).get("features", {}).get("clips")
        if not par:
            fig = feat_fig = "not verified"
        elif a["precision"] == "fp32":
            fig = f"max abs diff {par['max_abs_diff']:.2e} (max logit {par['max_abs_logit']:.3g})"
            feat_fig = f"max abs diff {feat['max_abs_diff']:.2e} (max {feat['max_abs_feature']:.3g})" if feat else "-"
        else:
            fig = f"min cosine {par['min_cosine']:.6f}, top-1 agreement {par['top1_agreement']:.0%}"
            feat_fig = f"min cosine {feat['min_cosine']:.6f}" if feat else "-"
        rows.append(f"| `{a['file']}` | {a['backend']} | {a['precision']} | {fig} | {feat_fig} |")
    return "\n".join(
        [
            f"# {manifest['model_name']}",
            "",
            f"ST-Adapter video classifier, {cfg['num_classes']} classes, "
            f"made {manifest['created']} by stadapter-export.",
            "",
            f"Input: {pre['num_frames']} frames (sampling rate {pre['sampling_rate'] or 'uniform'}), "
            f"{pre['size']}x{pre['size']}, CLIP-normalized; {pre['spatial_views']} spatial x "
            f"{pre['temporal_views']} temporal views averaged.",
            "",
            "| file | backend | precision | logits vs torch fp32 (check clips) | features vs torch fp32 |",
            "|---|---|---|---|---|",
            *rows,
            "",
            "```python",
            "from stadapter_deploy import load_predictor",
            'predictor = load_predictor("path/to/this/bundle")  # backend="auto"',
            'print(predictor.classify("video.mp4", top_k=5))',
            "```",
            "",
        ]
    )
