"""stadapter-export: the CLI end to end on tiny models, its inputs, ONNX structure, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_tiny_checkpoint

from export.cli import main
from stadapter_deploy import BundleError, build_model, load_predictor
from stadapter_deploy.export.onnx_export import count_ops
from stadapter_deploy.model import trainable_state_dict
from stadapter_deploy.runtime import load_bundle

ROOT = Path(__file__).resolve().parents[1]
# tiny preset: ln_pre + 2 per block x 3 blocks + ln_post
TINY_LAYER_NORMS = 8


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "export", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "final", seed=1)


@pytest.fixture(scope="module")
def fp16_bundle(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "bundle"
    proc = run_cli("--checkpoint", checkpoint, "--out", out, "--fp16", "--quiet", "--check-videos", "2")
    assert proc.returncode == 0, proc.stderr
    return out


def test_cli_writes_a_verified_bundle(fp16_bundle):
    m = json.loads((fp16_bundle / "manifest.json").read_text())
    assert m["schema_version"] == "stadapter-deploy/bundle-v1"
    assert m["config"]["width"] == 64 and m["num_classes"] == 6
    assert m["preprocessing"] == {
        "num_frames": 8,
        "sampling_rate": 0,
        "size": 32,
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
        "spatial_views": 1,
        "temporal_views": 1,
    }
    assert m["labels"]["file"] == "labels.txt" and (fp16_bundle / "labels.txt").read_text().startswith("moving")
    assert {"torch", "onnx", "onnxruntime", "tensorrt"} <= set(m["versions"]) and m["created"]
    assert m["parity"]["passed"] and m["parity"]["check_clips"] == 2
    files = {a["file"]: a for a in m["artifacts"]}
    assert set(files) == {"model.safetensors", "model.onnx", "model.fp16.onnx"}
    for a in files.values():
        assert len(a["sha256"]) == 64 and a["inputs"] == ["clips"] and a["outputs"] == ["logits", "features"]
        assert a["batch"] == {"min": 1, "max": None}
        assert a["parity"]["passed"]
    fp32, fp16 = files["model.onnx"]["parity"], files["model.fp16.onnx"]["parity"]
    for part in ("clips", "random"):
        assert fp32[part]["max_abs_diff"] <= 1e-4 * fp32[part]["max_abs_logit"]
        assert fp16[part]["min_cosine"] >= 0.999
    assert fp16["clips"]["top1_agreement"] == 1.0
    assert files["model.fp16.onnx"]["precision"] == "fp16" and files["model.onnx"]["opset"] >= 17
    assert (fp16_bundle / "README.md").read_text().startswith("# ")


def test_onnx_layernorm_is_one_node_and_fp16_keeps_it_fp32(fp16_bundle):
    import onnx
    from onnx import TensorProto

    for name in ("model.onnx", "model.fp16.onnx"):
        ops = count_ops(fp16_bundle / name)
        assert ops["LayerNormalization"] == TINY_LAYER_NORMS, ops
        assert ops.get("ReduceMean", 0) <= 1  # only the mean over frames; no decomposed LayerNorm
    proto = onnx.shape_inference.infer_shapes(onnx.load(str(fp16_bundle / "model.fp16.onnx")))
    types = {v.name: v.type.tensor_type.elem_type for v in [*proto.graph.value_info, *proto.graph.input]}
    types |= {t.name: t.data_type for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type in ("LayerNormalization", "Softmax"):
            assert types[node.input[0]] == TensorProto.FLOAT, node.name
    assert any(t.data_type == TensorProto.FLOAT16 for t in proto.graph.initializer)  # the weights are half
    assert proto.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # float32 I/O kept
    assert proto.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT


def test_fp16_onnx_runs_through_the_predictor(fp16_bundle):
    clips = np.random.default_rng(0).standard_normal((3, 3, 8, 32, 32)).astype(np.float32)
    half = load_predictor(fp16_bundle, backend="onnxruntime", precision="fp16").predict(clips)
    full = load_predictor(fp16_bundle, backend="torch").predict(clips)
    cos = (half * full).sum(1) / np.linalg.norm(half, axis=1) / np.linalg.norm(full, axis=1)
    assert cos.min() > 0.999


def test_trt_without_tensorrt_writes_onnx_and_exits_2(checkpoint, tmp_path):
    from stadapter_deploy.runtime.runners.trt_runner import tensorrt_missing

    if tensorrt_missing() is None:
        pytest.skip("TensorRT and a GPU are available here")
    out = tmp_path / "bundle"
    proc = run_cli("--checkpoint", checkpoint, "--out", out, "--trt", "--quiet", "--no-verify")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--trt skipped" in lines[0] and "Traceback" not in proc.stderr
    assert (out / "model.onnx").is_file()
    assert [a["backend"] for a in load_bundle(out).artifacts] == ["torch", "onnxruntime"]


@pytest.mark.parametrize("activation, told_by", [("quick_gelu", None), ("gelu", "config"), ("gelu", "flag")])
def test_clip_and_reference_adapter_checkpoint(tmp_path, activation, told_by):
    """OpenAI-style weights (QuickGELU), and an open_clip plain-GELU ViT told by its open_clip_config.json
    or, a bare state dict, by --clip-activation."""
    torch.manual_seed(3)
    model = build_model("tiny", mlp_activation=activation).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".adapter_pre_" in name:
                p.normal_(std=0.05)
    clip = {
        f"visual.{k}": v.half() for k, v in model.state_dict().items() if ".adapter_pre_" not in k and "fc." != k[:3]
    }
    clip["visual.proj"] = torch.zeros(64, 32)
    clip_path = tmp_path / ("clip.pt" if activation == "quick_gelu" else "open_clip_pytorch_model.bin")
    torch.save(clip, clip_path)
    if told_by == "config":
        vision_cfg = {"image_size": 32, "layers": 3, "width": 64, "head_width": 32, "patch_size": 8}
        (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"vision_cfg": vision_cfg}}))
    reference = {"model": trainable_state_dict(model), "optimizer": {}, "next_epoch": 5}
    torch.save(reference, tmp_path / "checkpoint-4.pth")
    out = tmp_path / "bundle"
    code = main(
        [
            "--clip",
            str(clip_path),
            "--adapter",
            str(tmp_path / "checkpoint-4.pth"),
            "--preset",
            "tiny",
            "--dataset",
            "synthetic",
            "--out",
            str(out),
            "--quiet",
            "--check-videos",
            "1",
            *(["--clip-activation", "gelu", "--fp16"] if told_by == "flag" else []),
            *(["--int8"] if told_by == "config" else []),  # each GELU bundle through a reduced precision's gate
        ]
    )
    assert code == 0
    bundle = load_bundle(out)
    precisions = {"flag": "fp16", "config": "int8"}
    assert told_by is None or bundle.find("onnxruntime", precisions[told_by])
    assert bundle.labels[0] == "moving left" and bundle.manifest["source"]["adapter"].endswith("checkpoint-4.pth")
    assert bundle.config.mlp_activation == activation
    clips = torch.randn(2, 3, 8, 32, 32)
    model.load_state_dict(
        {
            k: v.half().float() if not k.startswith("fc.") and ".adapter_pre_" not in k else v
            for k, v in model.state_dict().items()
        }
    )
    with torch.no_grad():
        expected = model(clips).numpy()
    got = load_predictor(out, backend="onnxruntime", precision="fp32").predict(clips)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_clip_adapter_pair_that_does_not_fit(tmp_path, capsys):
    torch.manual_seed(0)
    small = build_model("tiny")
    other = build_model("tiny", adapter_width=16)
    backbone = {f"visual.{k}": v for k, v in small.state_dict().items() if ".adapter_pre_" not in k and k[:3] != "fc."}
    torch.save(backbone, tmp_path / "clip.pt")
    torch.save({"model": trainable_state_dict(other)}, tmp_path / "checkpoint-0.pth")
    code = main(
        [
            "--clip",
            str(tmp_path / "clip.pt"),
            "--adapter",
            str(tmp_path / "checkpoint-0.pth"),
            "--preset",
            "tiny",
            "--out",
            str(tmp_path / "b"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "does not fit" in err and "adapter_pre_" in err
    assert not (tmp_path / "b").exists()


def test_labels_resolution(tmp_path):
    from stadapter_deploy.export.exporter import load_source

    ckpt = make_tiny_checkpoint(tmp_path / "c5", synthetic=False, num_classes=5)
    src = load_source(checkpoint=ckpt, dataset="synthetic")  # 6 synthetic classes != 5: generated names
    assert src.labels == [f"class_{i}" for i in range(5)] and src.preprocessing.num_frames == 8
    names = tmp_path / "names.txt"
    names.write_text("a\nb\nc\nd\ne\n")
    assert load_source(checkpoint=ckpt, labels_file=names).labels == list("abcde")
    names.write_text("a\nb\n")
    with pytest.raises(BundleError, match="2 class names but the model has 5"):
        load_source(checkpoint=ckpt, labels_file=names)
    k400 = load_source(checkpoint=make_tiny_checkpoint(tmp_path / "c6", synthetic=False), dataset="k400")
    assert k400.labels[:2] == ["class_0", "class_1"]  # 6 != 400
    assert k400.preprocessing.sampling_rate == 16 and k400.preprocessing.temporal_views == 3


def test_parity_failure_leaves_nothing(tmp_path, monkeypatch, capsys):
    from stadapter_deploy.export import parity

    ckpt = make_tiny_checkpoint(tmp_path / "ckpt")
    monkeypatch.setattr(parity, "FP32_REL_TOL", 0.0)  # any rounding difference now fails the fp32 gate
    code = main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "bundle"), "--quiet", "--check-videos", "1"])
    err = capsys.readouterr().err
    assert code == 1 and "parity gate failed" in err and "model.onnx" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no bundle, no leftover partial folder


@pytest.mark.parametrize(
    "args, message",
    [
        (["--checkpoint", "{tmp}/missing"], "not found"),
        (["--checkpoint", "{ckpt}", "--out", "{tmp}/file.txt/bundle"], "cannot write the bundle"),
        (["--checkpoint", "{ckpt}", "--out", "{ckpt}"], "not empty"),
        (["--checkpoint", "{ckpt}", "--labels", "{tmp}/nope.txt"], "labels file not found"),
        (["--clip", "{tmp}/clip.pt"], "both --clip FILE and --adapter"),
        (["--checkpoint", "{ckpt}", "--opset", "13"], "opset 13 < 17"),
        (["--checkpoint", "{ckpt}", "--trt-min-batch", "9"], "min <= opt <= max"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(tmp_path, checkpoint, capsys, args, message):
    (tmp_path / "file.txt").write_text("x")
    args = [a.format(tmp=tmp_path, ckpt=checkpoint) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    code = main([*args, "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_no_traceback_from_the_console_entry(tmp_path):
    proc = run_cli("--checkpoint", tmp_path / "missing", "--out", tmp_path / "b")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("stadapter-export: error:")


def test_help_explains_every_option():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for flag in (
        "--checkpoint",
        "--clip",
        "--adapter",
        "--out",
        "--labels",
        "--dataset",
        "--fp16",
        "--trt",
        "--no-verify",
        "--trt-max-batch",
        "--timing-cache",
    ):
        assert flag in proc.stdout


def test_overwrite_replaces_a_bundle(checkpoint, tmp_path):
    out = tmp_path / "bundle"
    assert main(["--checkpoint", str(checkpoint), "--out", str(out), "--quiet", "--no-verify"]) == 0
    first = load_bundle(out).manifest["created"]
    assert main(["--checkpoint", str(checkpoint), "--out", str(out), "--quiet", "--no-verify", "--overwrite"]) == 0
    bundle = load_bundle(out)
    assert bundle.manifest["parity"] is None and bundle.manifest["created"] >= first
    assert not [p for p in tmp_path.iterdir() if p.name != "bundle"]


def test_large_models_keep_weights_in_external_data(tmp_path, monkeypatch):
    from helpers import make_tiny_bundle

    from stadapter_deploy.export import onnx_export

    monkeypatch.setattr(onnx_export, "INLINE_LIMIT", 0)  # treat the tiny model as if it were over 2 GB
    bundle = make_tiny_bundle(tmp_path)
    onnx_artifact = load_bundle(bundle).find("onnxruntime")[0]
    assert [f["file"] for f in onnx_artifact["extra_files"]] == ["model.onnx.data"]
    assert (bundle / "model.onnx").stat().st_size < 300_000 < (bundle / "model.onnx.data").stat().st_size
    assert onnx_artifact["parity"]["passed"]  # onnxruntime ran it with its external data


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write into read-only folders")
def test_unwritable_output_dir(tmp_path, checkpoint, capsys):
    parent = tmp_path / "read-only"
    (parent / "bundle").mkdir(parents=True)
    parent.chmod(0o555)
    (parent / "bundle").chmod(0o555)
    try:
        code = main(["--checkpoint", str(checkpoint), "--out", str(parent / "bundle"), "--quiet", "--no-verify"])
    finally:
        parent.chmod(0o755)
    err = capsys.readouterr().err.strip()
    assert code == 1 and "cannot write the bundle" in err and len(err.splitlines()) == 1
