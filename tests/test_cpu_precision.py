"""CPU precisions end to end on a tiny model: the int8 artifact and its gate, bf16 torch, which precision
`auto` picks on each CPU kind, and int8 agreeing with fp32 on this CPU whatever its kind (CI runs the
agreement tests a second time under `qemu-x86_64 -cpu Haswell`: AVX2 without VNNI)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_tiny_checkpoint

from stadapter_deploy import hardware, load_predictor
from stadapter_deploy.export.parity import compare
from stadapter_deploy.export.quantize import Int8Recipe

VNNI = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni")
AVX2 = ("avx2", "fma")


def export(root, recipe: Int8Recipe):
    from stadapter_deploy.export.exporter import ExportOptions, export_bundle, load_source

    source = load_source(checkpoint=make_tiny_checkpoint(root / "checkpoint"))
    options = ExportOptions(int8=True, int8_recipe=recipe, progress=False)
    return export_bundle(source, root / "bundle", options).path


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory):
    """What `stadapter-export --int8` writes: 7-bit weights."""
    return export(tmp_path_factory.mktemp("int8"), Int8Recipe())


@pytest.fixture(scope="module")
def int8_8bit_bundle(tmp_path_factory):
    """8-bit weights, as bundles exported before issue 17 hold."""
    return export(tmp_path_factory.mktemp("int8_w8"), Int8Recipe(weight_bits=8))


@pytest.fixture
def cpu_flags(monkeypatch):
    """Pretend to be a CPU with the given flags (and machine name): every CPU question reads them."""

    def pretend(*flags: str, machine: str = "x86_64") -> None:
        monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
        monkeypatch.setattr(hardware.platform, "machine", lambda: machine)

    return pretend


def test_the_int8_artifact_is_gated_and_described(int8_bundle):
    from stadapter_deploy.runtime import load_bundle

    bundle = load_bundle(int8_bundle)
    (artifact,) = bundle.find("onnxruntime", "int8")
    assert artifact["file"] == "model.int8.onnx" and artifact["parity"]["passed"]
    assert artifact["parity"]["clips"]["n"] >= 1 and artifact["parity"]["clips"]["top1_agreement"] == 1.0
    q = artifact["quantization"]
    assert q["saturation_free"] and q["weights"].startswith("int8 [-64, 64]") and q["recipe"]["weight_bits"] == 7
    kept = q["kept_float"]
    assert kept["LayerNormalization"] > 0 and kept["Softmax"] > 0 and kept["MatMul (adapters)"] > 0
    assert q["quantized"]["MatMul (weights)"] > 0
    assert bundle.manifest["parity"]["cpu"] == {"kind": hardware.cpu_kind(), "flags": hardware.simd_flags()}


def test_auto_takes_int8_wherever_its_integer_sums_are_exact_and_fast(int8_bundle, int8_8bit_bundle, cpu_flags):
    from stadapter_deploy.export.bench import precision_method

    cpu_flags(*VNNI)
    for bundle in (int8_bundle, int8_8bit_bundle):
        vnni = load_predictor(bundle, backend="onnxruntime-cpu")
        assert vnni.precision == "int8" and "VNNI" in vnni.selection and "VNNI/AMX kernels" in precision_method(vnni)
    cpu_flags(*AVX2)
    avx2 = load_predictor(int8_bundle, backend="onnxruntime-cpu")
    assert avx2.precision == "int8" and "7-bit weights" in avx2.selection
    assert precision_method(avx2).endswith("U8S8 kernels (avx2)")
    old = load_predictor(int8_8bit_bundle, backend="onnxruntime-cpu")  # exact only through the slow U8U8 kernels
    assert old.precision == "fp32" and "8-bit weights" in old.selection and "--int8" in old.selection
    asked = load_predictor(int8_8bit_bundle, backend="onnxruntime-cpu", precision="int8")  # asked for: exact
    assert asked.precision == "int8" and precision_method(asked).endswith("U8U8 kernels (avx2)")


def test_int8_is_refused_in_one_line_on_a_cpu_it_was_never_checked_on(int8_bundle, cpu_flags):
    cpu_flags("asimd", "asimddp", machine="aarch64")
    with pytest.raises(ValueError) as refused:
        load_predictor(int8_bundle, backend="onnxruntime-cpu", precision="int8")
    message = str(refused.value)
    assert "\n" not in message and "x86 CPUs only" in message and "aarch64" in message and "fp32" in message
    auto = load_predictor(int8_bundle, backend="onnxruntime-cpu")
    assert auto.precision == "fp32" and "passed over" in auto.selection


@pytest.mark.parametrize("which", ["7-bit", "8-bit"])
def test_int8_agrees_with_fp32_on_this_cpu(int8_bundle, int8_8bit_bundle, motion_video, which):
    """On the CPU this runs on, whatever its kind: the issue's targets (cosine >= 0.995, max |diff| <= 0.05 x
    max |logit|) on random clips, and the same top class with close scores on a video."""
    bundle = int8_bundle if which == "7-bit" else int8_8bit_bundle
    fp32 = load_predictor(bundle, backend="onnxruntime-cpu", precision="fp32")
    int8 = load_predictor(bundle, backend="onnxruntime-cpu", precision="int8")
    clips = np.random.default_rng(1).standard_normal((4, *fp32.input_shape)).astype(np.float32)
    figures = compare(fp32.predict(clips), int8.predict(clips))
    assert figures["min_cosine"] >= 0.995 and figures["rel_diff"] <= 0.05, figures
    assert figures["max_abs_diff"] > 0  # int8 really ran
    a, b = fp32.classify(motion_video, top_k=6), int8.classify(motion_video, top_k=6)
    assert b.precision == "int8" and b.labels[0]["index"] == a.labels[0]["index"]
    np.testing.assert_allclose([x["score"] for x in b.labels], [x["score"] for x in a.labels], rtol=0.05, atol=1e-3)


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
    if hardware.cpu_has_bf16():
        bf16 = load_predictor(tiny_bundle, backend="torch-cpu", precision="bf16")
        fp32 = load_predictor(tiny_bundle, backend="torch-cpu", precision="fp32")
        assert bf16.precision == "bf16"
        np.testing.assert_allclose(bf16.predict(clips), fp32.predict(clips), rtol=0.05, atol=0.05)
    cpu_flags(*AVX2)
    with pytest.raises(ValueError, match="bf16 on the CPU needs AVX512-BF16 or AMX"):
        load_predictor(tiny_bundle, backend="torch-cpu", precision="bf16")
