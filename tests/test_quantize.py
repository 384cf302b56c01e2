"""int8 ONNX: a tiny exported model, quantized both ways, runs in ONNX Runtime close to fp32 and keeps
LayerNorm, Softmax and the adapters in float; its 7-bit weights are summed exactly by every x86 int8
kernel, and the runner's sessions sum 8-bit ones exactly too, on this CPU whatever its kind (CI runs
this file a second time under `qemu-x86_64 -cpu Haswell`: an AVX2 CPU without VNNI)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from stadapter_deploy import build_model, hardware
from stadapter_deploy.model import is_trainable_name

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from stadapter_deploy.export.onnx_export import export_onnx  # noqa: E402
from stadapter_deploy.export.quantize import Int8Recipe, int8_gemm_gops, quantize_int8  # noqa: E402
from stadapter_deploy.runtime.runners.ort_runner import exact_int8_needed, make_session  # noqa: E402

# Measured on the tiny preset with these weights, 16 random clips, the same on AVX-512 VNNI and on AVX2
# (qemu): relative L2 logits error max 0.0068 (dynamic), 0.0082 (static); the bound leaves room.
# 8-bit weights on AVX2 without the exact kernels gave 0.038 (dynamic) and 0.034 (static).
REL_TOL = 0.02


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if is_trainable_name(name):
                p.normal_(std=0.1)
    path = export_onnx(model, tmp_path_factory.mktemp("int8") / "fp32.onnx", num_frames=8)
    return path


@dataclass(frozen=True)
class KeepFloat(Int8Recipe):
    """A recipe that leaves named weight MatMuls in float (what bench_cpu_precision.py weighs)."""

    keep_float: tuple[str, ...] = ()


def clips(n, seed):
    return np.random.default_rng(seed).standard_normal((n, 3, 8, 32, 32)).astype(np.float32)


def run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"clips": x})[0]


def producers(graph):
    return {out: node for node in graph.node for out in node.output}


def int8_weights(path) -> np.ndarray:
    """Every int8 initializer of a quantized graph (the quantized weights), flattened."""
    graph = onnx.load(str(path)).graph
    values = [numpy_helper.to_array(t).ravel() for t in graph.initializer if t.data_type == TensorProto.INT8]
    return np.concatenate(values)


@pytest.mark.parametrize("method", ["dynamic", "static"])
def test_int8_runs_close_to_fp32_with_a_dynamic_batch(fp32_model, tmp_path, method):
    info = quantize_int8(fp32_model, tmp_path / "int8.onnx", clips(8, 0), Int8Recipe(method=method))
    # tiny: 3 blocks x (qkv, out_proj, c_fc, c_proj) + the trimmed last block's split q/kv
    assert info["method"] == method and info["quantized"]["MatMul (weights)"] == 13
    assert info["kept_float"]["MatMul (adapters)"] == 10  # 5 adapters x (fc1, fc2)
    assert info["kept_float"]["LayerNormalization"] > 0 and info["kept_float"]["Softmax"] == 3
    assert info["saturation_free"] and info["weights"].startswith("int8 [-64, 64]")
    for batch in (1, 3):
        x = clips(batch, 1)  # not the calibration clips
        ref, out = run(fp32_model, x), run(tmp_path / "int8.onnx", x)
        assert out.shape == ref.shape == (batch, 6)
        assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < REL_TOL
        assert not np.array_equal(out, ref)  # something was quantized
        assert (out.argmax(1) == ref.argmax(1)).all()


@pytest.mark.parametrize("method", ["dynamic", "static"])
def test_layernorm_softmax_and_adapters_stay_float(fp32_model, tmp_path, method):
    quantize_int8(fp32_model, tmp_path / "int8.onnx", clips(4, 0), Int8Recipe(method=method))
    graph = onnx.load(str(tmp_path / "int8.onnx")).graph
    made_by = producers(graph)
    ops = {n.op_type for n in graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul", "QuantizeLinear"}  # int8 is really there
    kept = [n for n in graph.node if n.op_type in ("LayerNormalization", "Softmax")]
    assert len(kept) == len(
        [n for n in onnx.load(str(fp32_model)).graph.node if n.op_type in ("LayerNormalization", "Softmax")]
    )
    for node in kept:
        # computed in float: still the float op, fed by float tensors (no DequantizeLinear before it)
        assert all(made_by[i].op_type != "DequantizeLinear" for i in node.input if i in made_by), node.name
    adapter_matmuls = [n for n in graph.node if "adapter_pre_" in n.name and "MatMul" in n.op_type]
    assert adapter_matmuls and all(n.op_type == "MatMul" for n in adapter_matmuls)
    for node in adapter_matmuls:  # weights are float initializers, not dequantized int8
        assert made_by.get(node.input[1]) is None or made_by[node.input[1]].op_type != "DequantizeLinear"


def test_weights_are_7_bit_unless_asked(fp32_model, tmp_path):
    quantize_int8(fp32_model, tmp_path / "w7.onnx")
    info = quantize_int8(fp32_model, tmp_path / "w8.onnx", recipe=Int8Recipe(weight_bits=8))
    seven, eight = int8_weights(tmp_path / "w7.onnx"), int8_weights(tmp_path / "w8.onnx")
    assert seven.min() >= -64 and seven.max() <= 64 and np.abs(seven).max() == 64  # the whole 7-bit range
    assert np.abs(eight).max() == 127 and not info["saturation_free"]


def test_quantize_adapters_and_keep_named_matmuls_float(fp32_model, tmp_path):
    info = quantize_int8(fp32_model, tmp_path / "int8.onnx", recipe=Int8Recipe(quantize_adapters=True))
    assert info["quantized"]["MatMul (weights)"] == 23 and info["kept_float"]["MatMul (adapters)"] == 0
    x = clips(2, 2)
    ref, out = run(fp32_model, x), run(tmp_path / "int8.onnx", x)
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < REL_TOL
    keep = ("/transformer/resblocks.0/mlp/c_fc/MatMul",)
    info = quantize_int8(fp32_model, tmp_path / "keep.onnx", recipe=KeepFloat(keep_float=keep))
    assert info["quantized"]["MatMul (weights)"] == 12 and info["kept_float"]["MatMul (weights, asked)"] == 1
    assert [n.op_type for n in onnx.load(str(tmp_path / "keep.onnx")).graph.node if n.name == keep[0]] == ["MatMul"]
    with pytest.raises(ValueError, match="keep_float names no weight MatMul"):
        quantize_int8(fp32_model, tmp_path / "bad.onnx", recipe=KeepFloat(keep_float=("nope",)))


def test_static_needs_calibration_clips_and_recipes_are_checked(fp32_model, tmp_path):
    with pytest.raises(ValueError, match="calibration_clips"):
        quantize_int8(fp32_model, tmp_path / "int8.onnx", recipe=Int8Recipe(method="static"))
    with pytest.raises(ValueError, match="unknown int8 method"):
        Int8Recipe(method="int4")
    with pytest.raises(ValueError, match="weight_bits must be 7 or 8"):
        Int8Recipe(weight_bits=6)


def test_int8_gemm_probe_gives_a_rate():
    assert int8_gemm_gops(1, m=64, k=64, n=64, seconds=0.05) > 0


# ----------------------------------------------------------------------------- exact integer sums on this CPU


def integer_matmul(weight: int, path) -> tuple[np.ndarray, np.ndarray]:
    """A MatMulInteger (uint8 activations x int8 weights -> int32) where every pair of products is
    2 x 255 x `weight`: over int16's 32767 for 8-bit weights (127), under it for 7-bit ones (64).
    Returns the activations and the exact int32 result."""
    a = np.full((16, 64), 255, np.uint8)
    rng = np.random.default_rng(0)
    w = (weight * rng.choice([-1, 1], size=(1, 16)) * np.ones((64, 1))).astype(np.int8)  # [K, N], signs per column
    zero_points = [numpy_helper.from_array(np.uint8(0), "a_zp"), numpy_helper.from_array(np.zeros(16, np.int8), "w_zp")]
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "w", "a_zp", "w_zp"], ["y"])],  # as quantize_dynamic writes it
        "sums",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [16, 64])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [16, 16])],
        [numpy_helper.from_array(w, "w"), *zero_points],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return a, a.astype(np.int64) @ w.astype(np.int64)


def test_7_bit_weights_are_summed_exactly_by_this_cpus_plain_int8_kernels(tmp_path):
    a, exact = integer_matmul(64, tmp_path / "w7.onnx")
    session = make_session(tmp_path / "w7.onnx", ["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, {"a": a})[0], exact)


def test_the_runners_int8_sessions_sum_8_bit_weights_exactly_on_this_cpu(tmp_path):
    a, exact = integer_matmul(127, tmp_path / "w8.onnx")
    runner_session = make_session(tmp_path / "w8.onnx", ["CPUExecutionProvider"], exact_int8=exact_int8_needed())
    np.testing.assert_array_equal(runner_session.run(None, {"a": a})[0], exact)
    plain = make_session(tmp_path / "w8.onnx", ["CPUExecutionProvider"]).run(None, {"a": a})[0]
    if hardware.cpu_has_int8_dot():  # VNNI/AMX: exact without help
        np.testing.assert_array_equal(plain, exact)
    elif hardware.cpu_is_x86():  # AVX2 / AVX-512 without VNNI: the int16 pair sums saturate
        assert np.abs(plain).max() < np.abs(exact).max()
