"""int8 ONNX: a tiny exported model, quantized both ways, runs in ONNX Runtime close to fp32 and keeps
LayerNorm, Softmax and the adapters in float."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stadapter_deploy import build_model
from stadapter_deploy.model import is_trainable_name

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from stadapter_deploy.export.onnx_export import export_onnx  # noqa: E402
from stadapter_deploy.export.quantize import int8_gemm_gops, quantize_int8  # noqa: E402

# Measured on the tiny preset with these weights, 64 random clips: relative L2 logits error median
# 0.0024 / max 0.0045 (dynamic), 0.0029 / 0.0066 (static); the bound leaves room for other CPUs' kernels.
REL_TOL = 0.03


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


def clips(n, seed):
    return np.random.default_rng(seed).standard_normal((n, 3, 8, 32, 32)).astype(np.float32)


def run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"clips": x})[0]


def producers(graph):
    return {out: node for node in graph.node for out in node.output}


@pytest.mark.parametrize("method", ["dynamic", "static"])
def test_int8_runs_close_to_fp32_with_a_dynamic_batch(fp32_model, tmp_path, method):
    info = quantize_int8(fp32_model, tmp_path / "int8.onnx", calibration_clips=clips(8, 0), method=method)
    # tiny: 3 blocks x (qkv, out_proj, c_fc, c_proj) + the trimmed last block's split q/kv
    assert info["method"] == method and info["quantized"]["MatMul (weights)"] == 13
    assert info["kept_float"]["MatMul (adapters)"] == 10  # 5 adapters x (fc1, fc2)
    assert info["kept_float"]["LayerNormalization"] > 0 and info["kept_float"]["Softmax"] == 3
    for batch in (1, 3):
        x = clips(batch, 1)  # not the calibration clips
        ref, out = run(fp32_model, x), run(tmp_path / "int8.onnx", x)
        assert out.shape == ref.shape == (batch, 6)
        assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < REL_TOL
        assert not np.array_equal(out, ref)  # something was quantized
        assert (out.argmax(1) == ref.argmax(1)).all()


@pytest.mark.parametrize("method", ["dynamic", "static"])
def test_layernorm_softmax_and_adapters_stay_float(fp32_model, tmp_path, method):
    quantize_int8(fp32_model, tmp_path / "int8.onnx", calibration_clips=clips(4, 0), method=method)
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


def test_quantize_adapters_too(fp32_model, tmp_path):
    info = quantize_int8(fp32_model, tmp_path / "int8.onnx", method="dynamic", quantize_adapters=True)
    assert info["quantized"]["MatMul (weights)"] == 23 and info["kept_float"]["MatMul (adapters)"] == 0
    x = clips(2, 2)
    ref, out = run(fp32_model, x), run(tmp_path / "int8.onnx", x)
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < REL_TOL


def test_static_needs_calibration_clips(fp32_model, tmp_path):
    with pytest.raises(ValueError, match="calibration_clips"):
        quantize_int8(fp32_model, tmp_path / "int8.onnx", method="static")
    with pytest.raises(ValueError, match="unknown int8 method"):
        quantize_int8(fp32_model, tmp_path / "int8.onnx", method="int4")


def test_int8_gemm_probe_gives_a_rate():
    assert int8_gemm_gops(1, m=64, k=64, n=64, seconds=0.05) > 0
