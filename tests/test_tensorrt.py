"""TensorRT 10.12+ and 11, strongly typed, checked here without TensorRT where that is possible:
the fp16 ONNX's types, the engine's naming and its refusal on another GPU or TensorRT version, and
every TensorRT name and call our build and runner code makes, against the names both versions'
bindings hold (tests/data/tensorrt_api_names.txt) and their documented signatures."""

from __future__ import annotations

import ast
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from helpers import copy_bundle, rewrite_manifest
from onnx import TensorProto, helper

from stadapter_deploy.errors import BundleError
from stadapter_deploy.export.onnx_export import export_onnx
from stadapter_deploy.export.tensorrt_build import fp16_graph_problems, onnx_op_types, plan_name
from stadapter_deploy.model import build_model
from stadapter_deploy.runtime.bundle import artifact_entry, load_bundle
from stadapter_deploy.runtime.runners.trt_runner import select_engine, tensorrt_missing, tensorrt_version_problem

ROOT = Path(__file__).resolve().parents[1]
TRT_FILES = [
    ROOT / "stadapter_deploy" / "export" / "tensorrt_build.py",
    ROOT / "stadapter_deploy" / "runtime" / "runners" / "trt_runner.py",
]
# The variables that hold TensorRT objects in TRT_FILES (self.engine, self.context count too).
TRT_OBJECTS = {"trt", "tensorrt", "logger", "builder", "network", "parser", "config", "opt_profile", "cache"}
TRT_OBJECTS |= {"runtime", "engine", "context", "layer", "tensor"}
API_NAMES = [
    line for line in (ROOT / "tests" / "data" / "tensorrt_api_names.txt").read_text().splitlines() if line[:1] != "#"
]
# Parameters of every TensorRT callable we use, as the Python API reference documents them (and as the
# docstrings inside both the 10.12 and the 11.4 bindings say): (parameter names, how many are required).
DOCUMENTED = {
    "Logger": (("min_severity",), 0),
    "Builder": (("logger",), 1),
    "Runtime": (("logger",), 1),
    "OnnxParser": (("network", "logger"), 2),
    "create_network": (("flags",), 0),
    "parse_from_file": (("model",), 1),
    "get_error": (("index",), 1),
    "create_builder_config": ((), 0),
    "set_memory_pool_limit": (("pool", "pool_size"), 2),
    "create_optimization_profile": ((), 0),
    "set_shape": (("input", "min", "opt", "max"), 4),
    "add_optimization_profile": (("profile",), 1),
    "create_timing_cache": (("serialized_timing_cache",), 1),
    "set_timing_cache": (("cache", "ignore_mismatch"), 2),
    "build_serialized_network": (("network", "config"), 2),
    "get_timing_cache": ((), 0),
    "serialize": ((), 0),
    "deserialize_cuda_engine": (("serialized_engine",), 1),
    "create_execution_context": (("strategy",), 0),
    "get_tensor_name": (("index",), 1),
    "get_tensor_mode": (("name",), 1),
    "get_tensor_dtype": (("name",), 1),
    "set_tensor_address": (("name", "memory"), 2),
    "set_input_shape": (("name", "shape"), 2),
    "execute_async_v3": (("stream_handle",), 1),
}
# Removed in TensorRT 11 (NVIDIA's 10.x -> 11.x migration guide), as (owner, name) pairs and names.
REMOVED_PAIRS = {("BuilderFlag", f) for f in ("FP16", "BF16", "INT8", "FP8", "INT4", "FP4", "DIRECT_IO")}
REMOVED_PAIRS |= {("BuilderFlag", "OBEY_PRECISION_CONSTRAINTS"), ("BuilderFlag", "PREFER_PRECISION_CONSTRAINTS")}
REMOVED_PAIRS |= {("NetworkDefinitionCreationFlag", "EXPLICIT_BATCH")}
REMOVED_NAMES = {"int8_calibrator", "set_quantization_flag", "set_calibration_profile", "device_memory_size"}
REMOVED_NAMES |= {"IInt8EntropyCalibrator2", "IInt8MinMaxCalibrator", "IInt8LegacyCalibrator", "IInt8Calibrator"}
# Per-layer precision hints are weak typing: a strongly typed network refuses them; 11's bindings lack them.
REMOVED_NAMES |= {"precision", "set_output_type"}


def in_api(name: str) -> bool:
    """True when both versions' bindings hold `name`. The linker stores a string that ends another one
    only once (tail merging: 'num_errors' lives inside 'get_num_errors'), so a suffix counts."""
    return any(n.endswith(name) for n in API_NAMES)


def attribute_chain(node: ast.AST) -> list[str]:
    """`self.engine.get_tensor_mode` -> ['engine', 'get_tensor_mode']; calls in between are skipped."""
    names = []
    while True:
        if isinstance(node, ast.Attribute):
            names.append(node.attr)
            node = node.value
        elif isinstance(node, ast.Call):
            node = node.func
        elif isinstance(node, ast.Name):
            names.append(node.id)
            break
        else:
            return []
    names.reverse()
    return names[1:] if names[0] == "self" else names


def trt_chains() -> set[tuple[str, ...]]:
    chains = set()
    for path in TRT_FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            chain = attribute_chain(node) if isinstance(node, ast.Attribute) else []
            if len(chain) > 1 and chain[0] in TRT_OBJECTS:
                chains.add(tuple(chain))
    return chains


def trt_calls() -> list[tuple[str, ast.Call]]:
    calls = []
    for path in TRT_FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                chain = attribute_chain(node.func)
                if len(chain) > 1 and chain[0] in TRT_OBJECTS:
                    calls.append((chain[-1], node))
    return calls


def test_tensorrt_code_uses_only_names_both_10_12_and_11_hold():
    used = {name for chain in trt_chains() for name in chain[1:]}
    assert {"STRONGLY_TYPED", "build_serialized_network", "set_tensor_address", "execute_async_v3"} <= used
    assert [n for n in sorted(used) if not in_api(n)] == []
    keywords = {k.arg for _, call in trt_calls() for k in call.keywords}
    assert keywords == {"ignore_mismatch"} and all(in_api(k) for k in keywords)


def test_tensorrt_code_uses_no_api_that_11_removed():
    chains = trt_chains()
    pairs = {pair for chain in chains for pair in zip(chain, chain[1:], strict=False)}
    assert not pairs & REMOVED_PAIRS
    assert not {name for chain in chains for name in chain} & REMOVED_NAMES
    # and the committed name list would catch them anyway: 11's bindings hold none of these
    for name in ("OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS", "EXPLICIT_BATCH", "FP16"):
        assert not in_api(name), name
    assert not any(in_api(name) for name in REMOVED_NAMES)


def test_tensorrt_calls_match_the_documented_signatures():
    calls = trt_calls()
    assert {name for name, _ in calls} == set(DOCUMENTED), "a TensorRT call is missing from DOCUMENTED, or unused"
    for name, call in calls:
        params, required = DOCUMENTED[name]
        given = len(call.args) + len(call.keywords)
        where = f"{name}() at line {call.lineno}"
        assert not any(isinstance(a, ast.Starred) for a in call.args) and all(k.arg for k in call.keywords), where
        assert required <= given <= len(params), f"{where}: {given} arguments, documented {params}"
        assert all(k.arg in params[len(call.args) :] for k in call.keywords), where


def test_the_network_is_created_strongly_typed():
    calls = [call for name, call in trt_calls() if name == "create_network"]
    assert len(calls) == 1
    assert ast.unparse(calls[0].args[0]) == "1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)"


# ----------------------------------------------------------------------------- the fp16 graph


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    folder = tmp_path_factory.mktemp("onnx")
    return export_onnx(model, folder / "model.onnx"), export_onnx(model, folder / "model.fp16.onnx", fp16=True)


def test_fp16_onnx_computes_layernorm_and_softmax_in_fp32_and_the_matmuls_in_fp16(tiny_onnx):
    _, fp16 = tiny_onnx
    nodes = onnx_op_types(fp16)
    by_op = lambda op: [(ins, outs) for o, _, ins, outs in nodes if o == op]
    layer_norms, softmaxes = by_op("LayerNormalization"), by_op("Softmax")
    assert len(layer_norms) == 2 * 3 + 2 and len(softmaxes) >= 3  # ln_1, ln_2 per block; ln_pre, ln_post
    assert all(ins == ["float"] * 3 and outs == ["float"] for ins, outs in layer_norms)  # x, scale, bias
    assert all(ins == ["float"] and outs == ["float"] for ins, outs in softmaxes)
    matmuls = by_op("MatMul") + by_op("Gemm")
    assert matmuls and all(ins[0] == "float16" for ins, _ in matmuls)
    graph = onnx.load(str(fp16), load_external_data=False).graph  # float32 in and out, as the runner feeds it
    assert [v.name for v in graph.output] == ["logits", "features"]
    assert [v.type.tensor_type.elem_type for v in (*graph.input, *graph.output)] == [TensorProto.FLOAT] * 3
    assert fp16_graph_problems(fp16) == []


def test_an_fp32_graph_or_an_fp16_layernorm_is_refused_before_tensorrt(tiny_onnx, tmp_path):
    fp32, _ = tiny_onnx
    assert fp16_graph_problems(fp32) == ["no MatMul or Gemm computes in float16: the engine would not be fp16"]
    half = lambda name, shape: helper.make_tensor_value_info(name, TensorProto.FLOAT16, shape)
    graph = helper.make_graph(
        [
            helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["y"], name="ln", axis=-1),
            helper.make_node("MatMul", ["y", "w"], ["z"], name="mm"),
        ],
        "fp16_layernorm",
        [half("x", [2, 4]), half("scale", [4]), half("bias", [4]), half("w", [4, 4])],
        [half("z", [2, 4])],
    )
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    assert fp16_graph_problems(path) == ["LayerNormalization ln computes in float16, not float"]

    from stadapter_deploy.export.tensorrt_build import build_engine

    with pytest.raises(BundleError, match="cannot be built as an fp16 engine: LayerNormalization ln"):
        build_engine(path, tmp_path / "x.plan", (3, 8, 32, 32))  # refused before TensorRT is imported
    assert not (tmp_path / "x.plan").exists()


# ----------------------------------------------------------------------------- naming and refusal


def test_plan_names_carry_the_gpu_and_the_full_tensorrt_version():
    assert plan_name("NVIDIA H200", "11.4.0.106") == "model.fp16.nvidia-h200.trt11.4.0.106.plan"
    assert plan_name("NVIDIA H100 80GB HBM3", "10.12.0.36") == "model.fp16.nvidia-h100-80gb-hbm3.trt10.12.0.36.plan"
    assert plan_name("NVIDIA H200", "10.12.0.36") != plan_name("NVIDIA H200", "10.13.0.35")


def test_tensorrt_older_than_10_12_is_named_as_the_problem():
    assert tensorrt_version_problem("10.12.0.36") is None and tensorrt_version_problem("11.4.0.106") is None
    assert "too old" in tensorrt_version_problem("10.11.0.33") and "10.12" in tensorrt_version_problem("8.6.1")
    assert "unreadable" in tensorrt_version_problem("dev")


ENGINE_GPU, ENGINE_TRT = "NVIDIA H100 80GB HBM3", "10.12.0.36"


@pytest.fixture
def bundle_with_engine(tiny_bundle, tmp_path):
    """The tiny bundle plus an engine entry for ENGINE_GPU / ENGINE_TRT (the plan's bytes are never read here)."""
    copy = copy_bundle(tiny_bundle, tmp_path / "bundle")
    name = plan_name(ENGINE_GPU, ENGINE_TRT)
    (copy / name).write_bytes(b"not a real plan")

    def add_engine(m):
        entry = artifact_entry(
            copy, name, backend="tensorrt", precision="fp16", batch=(1, 32), gpu=ENGINE_GPU, tensorrt_version=ENGINE_TRT
        )
        m["artifacts"].append(entry)

    rewrite_manifest(copy, add_engine)
    return load_bundle(copy)


@pytest.mark.parametrize(
    "gpu, version", [("NVIDIA H200", ENGINE_TRT), (ENGINE_GPU, "11.4.0.106"), ("NVIDIA L4", "10.13.0.35")]
)
def test_an_engine_for_another_gpu_or_tensorrt_is_refused_with_the_rebuild_command(bundle_with_engine, gpu, version):
    with pytest.raises(BundleError) as refused:
        select_engine(bundle_with_engine, gpu, version)
    message = str(refused.value)
    assert "\n" not in message
    assert f"no TensorRT engine for this machine ({gpu} / TensorRT {version})" in message
    assert f"{plan_name(ENGINE_GPU, ENGINE_TRT)} for {ENGINE_GPU} / TensorRT {ENGINE_TRT}" in message
    assert message.split("Rebuild here: ")[1].startswith("stadapter-export --checkpoint ")


def test_the_matching_engine_is_selected(bundle_with_engine):
    assert select_engine(bundle_with_engine, ENGINE_GPU, ENGINE_TRT)["file"] == plan_name(ENGINE_GPU, ENGINE_TRT)


def test_the_rebuild_command_remakes_the_bundle(bundle_with_engine, tmp_path):
    with pytest.raises(BundleError) as refused:
        select_engine(bundle_with_engine, "NVIDIA H200", "11.4.0.106")
    argv = shlex.split(str(refused.value).split("Rebuild here: ")[1])
    assert argv[0] == "stadapter-export" and argv[-1] == "--trt"
    proc = subprocess.run(
        [sys.executable, "-m", "export", *argv[1:], "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    out = Path(argv[argv.index("--out") + 1])
    if tensorrt_missing() is not None:  # here: the ONNX bundle is written, then --trt fails loudly
        assert proc.returncode == 2 and "--trt skipped" in proc.stderr, proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr
    rebuilt, original = load_bundle(out), bundle_with_engine
    assert rebuilt.labels == original.labels and rebuilt.config == original.config
    assert rebuilt.preprocessing == original.preprocessing and rebuilt.model_name == original.model_name
    assert rebuilt.manifest["parity"]["passed"]
    clips = np.random.default_rng(0).standard_normal((2, *original.preprocessing.clip_shape)).astype(np.float32)
    from stadapter_deploy.runtime.predictor import load_predictor

    np.testing.assert_allclose(
        load_predictor(rebuilt, backend="torch").predict(clips),
        load_predictor(original, backend="torch").predict(clips),
        rtol=0,
        atol=0,
    )


# ----------------------------------------------------------------------------- on a GPU with TensorRT


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.skipif(tensorrt_missing() is not None, reason=f"needs TensorRT and a GPU: {tensorrt_missing()}")
def test_a_real_engine_is_strongly_typed_from_the_fp16_onnx_and_refused_for_another_version(tmp_path):
    from helpers import make_tiny_checkpoint

    from export.cli import main
    from stadapter_deploy.runtime.predictor import load_predictor

    out = tmp_path / "bundle"
    args = ["--checkpoint", str(make_tiny_checkpoint(tmp_path / "ckpt")), "--out", str(out), "--trt", "--quiet"]
    assert main([*args, "--timing-cache", str(tmp_path / "cache"), "--trt-max-batch", "4"]) == 0
    bundle = load_bundle(out)
    engine = bundle.find("tensorrt")[0]
    assert engine["built_from"] == "model.fp16.onnx" and engine["network"] == "strongly typed"
    assert bundle.find("onnxruntime", "fp16") and engine["parity"]["passed"]
    assert load_predictor(out).backend == "tensorrt"
    rewrite_manifest(out, lambda m: m["artifacts"][-1].update(tensorrt_version="10.12.0.0"))
    with pytest.raises(BundleError, match="built with. Rebuild here: stadapter-export --checkpoint"):
        load_predictor(out, backend="tensorrt")
