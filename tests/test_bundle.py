"""Bundle manifest logic, TensorRT profile/naming logic, backend choice, and the benchmark's arithmetic."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import copy_bundle, rewrite_manifest

from stadapter_deploy import BundleError, load_predictor
from stadapter_deploy.export.bench import model_gflops
from stadapter_deploy.export.tensorrt_build import BatchProfile, plan_name
from stadapter_deploy.model import get_preset
from stadapter_deploy.runtime import choose_backend, load_bundle
from stadapter_deploy.runtime.runners.trt_runner import tensorrt_missing

ROOT = Path(__file__).resolve().parents[1]


def test_manifest_lists_every_file_with_its_checksum(tiny_bundle):
    import hashlib

    m = load_bundle(tiny_bundle).manifest
    listed = {m["labels"]["file"]}
    for a in m["artifacts"]:
        listed |= {a["file"], *(f["file"] for f in a["extra_files"])}
        assert a["sha256"] == hashlib.sha256((tiny_bundle / a["file"]).read_bytes()).hexdigest()
    assert {p.name for p in tiny_bundle.iterdir()} == listed | {"manifest.json", "README.md"}


def test_tampered_labels_and_config_refused(tiny_bundle, tmp_path):
    for name in ("labels.txt", "config.json"):
        copy = copy_bundle(tiny_bundle, tmp_path / name)
        (copy / name).write_text((copy / name).read_text().replace("a", "b"))
        with pytest.raises(BundleError, match=name):
            load_bundle(copy)


def test_manifest_schema_checked(tiny_bundle, tmp_path):
    copy = copy_bundle(tiny_bundle, tmp_path / "b")
    rewrite_manifest(copy, lambda m: m.update(schema_version="other/v9"))
    with pytest.raises(BundleError, match="unsupported bundle schema"):
        load_bundle(copy)
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(copy)


def test_corrupt_onnx_with_matching_checksum_is_refused(tiny_bundle, tmp_path):
    from stadapter_deploy.runtime.bundle import sha256_file

    copy = copy_bundle(tiny_bundle, tmp_path / "b")
    (copy / "model.onnx").write_bytes(b"\x08\x07garbage, not a protobuf" * 10)

    def fix_checksum(m):
        a = next(a for a in m["artifacts"] if a["file"] == "model.onnx")
        a["sha256"], a["bytes"] = sha256_file(copy / "model.onnx"), (copy / "model.onnx").stat().st_size

    rewrite_manifest(copy, fix_checksum)
    with pytest.raises(BundleError, match="model.onnx is not a readable ONNX model"):  # refused at load
        load_predictor(copy, backend="onnxruntime")
    from stadapter_deploy.export.onnx_export import check_onnx

    with pytest.raises(BundleError, match="not a valid ONNX model"):
        check_onnx(copy / "model.onnx")


def test_auto_falls_back_to_torch_without_onnx(tiny_bundle, tmp_path):
    copy = copy_bundle(tiny_bundle, tmp_path / "b")
    (copy / "model.onnx").unlink()
    rewrite_manifest(copy, lambda m: m.update(artifacts=[a for a in m["artifacts"] if a["backend"] == "torch"]))
    name, skipped = choose_backend(load_bundle(copy))
    assert name == "torch-cpu"
    assert any(s.startswith("onnxruntime-cpu: the bundle holds no onnxruntime") for s in skipped)
    assert load_predictor(copy).backend == "torch-cpu"


def test_engine_batch_limit_splits_predict(tiny_bundle, tmp_path):
    copy = copy_bundle(tiny_bundle, tmp_path / "b")

    def limit(m):
        next(a for a in m["artifacts"] if a["backend"] == "onnxruntime")["batch"]["max"] = 2

    rewrite_manifest(copy, limit)
    predictor = load_predictor(copy, backend="onnxruntime")
    assert predictor.max_batch == 2
    clips = np.random.default_rng(1).standard_normal((5, 3, 8, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(
        predictor.predict(clips), load_predictor(tiny_bundle, backend="torch").predict(clips), rtol=1e-4, atol=1e-5
    )


def test_tensorrt_profile_shapes_and_validation():
    profile = BatchProfile()
    assert (profile.min, profile.opt, profile.max) == (1, 8, 32)
    assert profile.shapes((3, 8, 224, 224)) == ((1, 3, 8, 224, 224), (8, 3, 8, 224, 224), (32, 3, 8, 224, 224))
    for bad in ((0, 1, 2), (4, 2, 8), (1, 16, 8)):
        with pytest.raises(ValueError, match="min <= opt <= max"):
            BatchProfile(*bad)


def test_plan_named_after_gpu_and_tensorrt_version():
    assert plan_name("NVIDIA H100 80GB HBM3", "10.3.0") == "model.fp16.nvidia-h100-80gb-hbm3.trt10.3.0.plan"
    assert plan_name("Tesla T4", "10.0.1") != plan_name("NVIDIA A10G", "10.0.1")


def test_tensorrt_artifact_for_another_gpu_is_not_offered(tiny_bundle, tmp_path):
    copy = copy_bundle(tiny_bundle, tmp_path / "b")
    (copy / "model.fp16.other-gpu.trt10.0.0.plan").write_bytes(b"plan")

    def add_engine(m):
        from stadapter_deploy.runtime.bundle import artifact_entry

        entry = artifact_entry(
            copy,
            "model.fp16.other-gpu.trt10.0.0.plan",
            backend="tensorrt",
            precision="fp16",
            batch=(1, 32),
            gpu="Other GPU",
            tensorrt_version="10.0.0",
            profile={"min": 1, "opt": 8, "max": 32},
        )
        m["artifacts"].append(entry)

    rewrite_manifest(copy, add_engine)
    bundle = load_bundle(copy)
    assert bundle.find("tensorrt")[0]["batch"] == {"min": 1, "max": 32}
    name, skipped = choose_backend(bundle)
    assert name == "onnxruntime-cpu" and skipped[0].startswith("tensorrt:")


def test_model_gflops_matches_the_design_figure():
    assert model_gflops(get_preset("vit_b16_adapter12x384"), num_frames=8) == pytest.approx(303, abs=1.5)
    b16_24 = model_gflops(get_preset("vit_b16_adapter24x384"), 8)
    assert b16_24 - model_gflops(get_preset("vit_b16_adapter12x384"), 8) == pytest.approx(8 * 12 * 0.232, rel=0.02)


def test_bench_cli_prints_a_table_and_writes_a_plot(tiny_bundle, tmp_path):
    png, js = tmp_path / "bench.png", tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "export",
            "bench",
            str(tiny_bundle),
            "--batches",
            "1",
            "2",
            "--iters",
            "2",
            "--png",
            str(png),
            "--json",
            str(js),
            "--threads",
            "1",
            "--matmul-seconds",
            "0.1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| backend | precision | batch |" in proc.stdout and "matmul" in proc.stdout
    from stadapter_deploy.hardware import cpu_has_bf16

    rows = json.loads(js.read_text())["rows"]
    runs = {("torch-cpu", "fp32"), ("onnxruntime-cpu", "fp32")}
    runs |= {("torch-cpu", "bf16")} if cpu_has_bf16() else set()  # every precision this CPU can run
    assert {(r["backend"], r["precision"], r["batch"]) for r in rows} == {(b, p, n) for b, p in runs for n in (1, 2)}
    assert "| vs onnxruntime fp32 | vs torch fp32 |" in proc.stdout
    assert all(r["clips_per_s"] > 0 for r in rows)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.tensorrt
@pytest.mark.skipif(tensorrt_missing() is not None, reason=f"needs TensorRT and a GPU: {tensorrt_missing()}")
def test_tensorrt_engine_end_to_end(tmp_path):
    from helpers import make_tiny_checkpoint

    from export.cli import main

    ckpt = make_tiny_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "bundle"
    cache = tmp_path / "timing.cache"
    args = [
        "--checkpoint",
        str(ckpt),
        "--out",
        str(out),
        "--trt",
        "--fp16",
        "--quiet",
        "--timing-cache",
        str(cache),
        "--trt-min-batch",
        "1",
        "--trt-opt-batch",
        "2",
        "--trt-max-batch",
        "4",
    ]
    assert main(args) == 0
    assert cache.stat().st_size > 0
    engine = load_bundle(out).find("tensorrt")[0]
    assert engine["batch"] == {"min": 1, "max": 4} and engine["parity"]["passed"]
    predictor = load_predictor(out)
    assert predictor.backend == "tensorrt"
    clips = np.random.default_rng(0).standard_normal((6, 3, 8, 32, 32)).astype(np.float32)  # > max: split
    np.testing.assert_allclose(
        predictor.predict(clips), load_predictor(out, backend="torch", device="cpu").predict(clips), atol=5e-3
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m["preprocessing"].update(size=48), "takes clips of [N, 3, 8, 32, 32] but the preprocessing makes"),
        (lambda m: m["preprocessing"].update(num_frames=16), "[N, 3, 16, 32, 32]"),
        (lambda m: m.update(num_classes=7), "num_classes is 7 but the model config says 6"),
        (lambda m: m["config"].update(num_classes=5), "6 labels for a model with 5 classes"),
    ],
)
def test_a_manifest_that_does_not_fit_its_model_is_refused_at_load(tiny_bundle, tmp_path, change, message):
    copy = copy_bundle(tiny_bundle, tmp_path / "b")
    rewrite_manifest(copy, change)
    with pytest.raises(BundleError, match="does not fit its model") as info:
        load_bundle(copy)
    assert message in str(info.value) and len(str(info.value).splitlines()) == 1


def test_artifact_paths_stay_inside_the_bundle(tiny_bundle, tmp_path):
    copy = copy_bundle(tiny_bundle, tmp_path / "b")
    outside = tmp_path / "outside.onnx"
    shutil.copy(copy / "model.onnx", outside)  # a valid model, with the right checksum, next to the bundle

    def point_outside(m):
        next(a for a in m["artifacts"] if a["file"] == "model.onnx")["file"] = "../outside.onnx"

    rewrite_manifest(copy, point_outside)
    with pytest.raises(BundleError, match="'../outside.onnx', a file outside the bundle"):
        load_bundle(copy, verify=False)
    rewrite_manifest(copy, lambda m: m["labels"].update(file=str(tmp_path / "labels.txt")))  # absolute
    with pytest.raises(BundleError, match="outside the bundle"):
        load_bundle(copy, verify=False)


def test_onnx_external_data_the_manifest_does_not_list_is_refused(tiny_bundle, tmp_path):
    """ONNX Runtime loads whatever data file a graph names beside it: only files the manifest lists (and so
    checksums) may be named."""
    import onnx

    from stadapter_deploy.runtime.bundle import artifact_entry

    copy = copy_bundle(tiny_bundle, tmp_path / "b")
    model = onnx.load(str(copy / "model.onnx"))
    onnx.save(model, str(copy / "model.onnx"), save_as_external_data=True, location="weights.bin", size_threshold=0)
    assert (copy / "weights.bin").stat().st_size > 10_000

    def relist(extra_files):
        def change(m):
            i = next(i for i, a in enumerate(m["artifacts"]) if a["file"] == "model.onnx")
            old = m["artifacts"][i]
            m["artifacts"][i] = artifact_entry(
                copy, "model.onnx", backend=old["backend"], precision=old["precision"], extra_files=extra_files
            )

        return change

    rewrite_manifest(copy, relist([]))  # the graph's own checksum is right; its data file is not listed
    with pytest.raises(BundleError, match=r"loads weights from \['weights.bin'\], which the manifest does not list"):
        load_predictor(copy, backend="onnxruntime")
    rewrite_manifest(copy, relist(["weights.bin"]))
    predictor = load_predictor(copy, backend="onnxruntime")
    clips = np.random.default_rng(0).standard_normal((1, *predictor.input_shape)).astype(np.float32)
    expected = load_predictor(tiny_bundle, backend="onnxruntime").predict(clips)
    np.testing.assert_allclose(predictor.predict(clips), expected, rtol=1e-5, atol=1e-6)
    (copy / "weights.bin").write_bytes((copy / "weights.bin").read_bytes()[::-1])  # listed: now checksummed
    with pytest.raises(BundleError, match="weights.bin"):
        load_predictor(copy, backend="onnxruntime")
