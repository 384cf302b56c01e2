"""CPU precisions end to end on a tiny model: the int8 artifact and its gate, bf16 torch, and which
precision `auto` picks on CPUs with and without int8 dot products."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_tiny_checkpoint

from stadapter_deploy import load_predictor
from stadapter_deploy.runtime import runner


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory):
    from stadapter_deploy.export.exporter import ExportOptions, export_bundle, load_source

    root = tmp_path_factory.mktemp("int8")
    source = load_source(checkpoint=make_tiny_checkpoint(root / "checkpoint"))
    return export_bundle(source, root / "bundle", ExportOptions(int8=True, progress=False)).path


@pytest.fixture
def cpu_flags(monkeypatch):
    """Pretend to be a CPU with the given flags (auto's choice reads them)."""

    def pretend(*flags: str) -> None:
        monkeypatch.setattr(runner, "cpu_flags", lambda: frozenset(flags))

    return pretend


def test_the_int8_artifact_is_gated_and_described(int8_bundle):
    from stadapter_deploy.runtime import load_bundle

    (artifact,) = load_bundle(int8_bundle).find("onnxruntime", "int8")
    assert artifact["file"] == "model.int8.onnx" and artifact["parity"]["passed"]
    assert artifact["parity"]["clips"]["n"] >= 1 and artifact["parity"]["clips"]["top1_agreement"] == 1.0
    kept = artifact["quantization"]["kept_float"]
    assert kept["LayerNormalization"] > 0 and kept["Softmax"] > 0 and kept["MatMul (adapters)"] > 0
    assert artifact["quantization"]["quantized"]["MatMul (weights)"] > 0


def test_auto_takes_int8_only_where_the_cpu_has_int8_dot_products(int8_bundle, cpu_flags):
    cpu_flags("avx2", "avx512f", "avx512_vnni")
    vnni = load_predictor(int8_bundle, backend="onnxruntime-cpu")
    assert vnni.precision == "int8" and "VNNI" in vnni.selection
    cpu_flags("avx2", "fma")  # an AVX2-only machine: int8 would be slower than fp32 there
    avx2 = load_predictor(int8_bundle, backend="onnxruntime-cpu")
    assert avx2.precision == "fp32" and "passed over" in avx2.selection
    asked = load_predictor(int8_bundle, backend="onnxruntime-cpu", precision="int8")  # asked for: honoured
    assert asked.precision == "int8"


def test_int8_gives_the_fp32_answer_on_a_video(int8_bundle, motion_video):
    fp32 = load_predictor(int8_bundle, backend="onnxruntime-cpu", precision="fp32").classify(motion_video, top_k=6)
    int8 = load_predictor(int8_bundle, backend="onnxruntime-cpu", precision="int8").classify(motion_video, top_k=6)
    assert int8.precision == "int8" and int8.labels[0]["index"] == fp32.labels[0]["index"]
    np.testing.assert_allclose(
        [x["score"] for x in int8.labels], [x["score"] for x in fp32.labels], rtol=0.05, atol=1e-3
    )


def test_the_gate_refuses_an_artifact_that_changes_the_answer():
    from stadapter_deploy.export.parity import CheckInputs, check_artifact

    rng = np.random.default_rng(0)
    inputs = CheckInputs(clips=np.zeros((4, 3, 8, 32, 32), np.float32), random=np.zeros((2, 3, 8, 32, 32), np.float32))
    reference = {"clips": rng.standard_normal((4, 6)) * 3, "random": rng.standard_normal((2, 6))}
    close = check_artifact(lambda x: reference["clips" if len(x) == 4 else "random"] * 1.01, reference, inputs, "int8")
    assert close["passed"]
    swapped = lambda x: (reference["clips"] if len(x) == 4 else reference["random"])[:, ::-1]  # other top-1
    far = check_artifact(swapped, reference, inputs, "int8")
    assert not far["passed"] and any("top-1 agrees" in f for f in far["failures"])


def test_torch_bf16_on_a_cpu_with_bf16(tiny_bundle, cpu_flags):
    clips = np.random.default_rng(1).standard_normal((2, 3, 8, 32, 32)).astype(np.float32)
    if runner.cpu_has_bf16():
        bf16 = load_predictor(tiny_bundle, backend="torch-cpu", precision="bf16")
        fp32 = load_predictor(tiny_bundle, backend="torch-cpu", precision="fp32")
        assert bf16.precision == "bf16"
        np.testing.assert_allclose(bf16.predict(clips), fp32.predict(clips), rtol=0.05, atol=0.05)
    cpu_flags("avx2")
    with pytest.raises(ValueError, match="bf16 on the CPU needs AVX512-BF16 or AMX"):
        load_predictor(tiny_bundle, backend="torch-cpu", precision="bf16")
