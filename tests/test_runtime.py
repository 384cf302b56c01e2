"""Runtime: bundle loading, the Predictor interface, and the same answers from every CPU backend."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from stadapter_deploy import BundleError, load_predictor
from stadapter_deploy.runtime import load_bundle


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    from stadapter_deploy.video.synthetic import write_motion_video

    return write_motion_video(tmp_path_factory.mktemp("video") / "clip.mp4", label=2, seed=7)


def test_torch_and_onnxruntime_classify_the_same(tiny_bundle, video):
    results = {b: load_predictor(tiny_bundle, backend=b).classify(video, top_k=6) for b in ("torch", "onnxruntime")}
    torch_res, ort_res = results["torch"], results["onnxruntime"]
    assert torch_res["backend"] == "torch-cpu" and ort_res["backend"] == "onnxruntime-cpu"
    assert [x["index"] for x in torch_res["labels"]] == [x["index"] for x in ort_res["labels"]]
    np.testing.assert_allclose(
        [x["score"] for x in torch_res["labels"]], [x["score"] for x in ort_res["labels"]], rtol=1e-4, atol=1e-6
    )
    assert torch_res["frames"] == ort_res["frames"] and len(torch_res["frames"]) == 8
    assert sum(x["score"] for x in torch_res["labels"]) == pytest.approx(1.0, abs=1e-6)
    assert {x["label"] for x in torch_res["labels"]} == set(load_bundle(tiny_bundle).labels)
    assert set(torch_res["timings_ms"]) == {"decode", "preprocess", "infer", "total"}


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_dynamic_batch(tiny_bundle, batch):
    rng = np.random.default_rng(batch)
    clips = rng.standard_normal((batch, 3, 8, 32, 32)).astype(np.float32)
    ort_logits = load_predictor(tiny_bundle, backend="onnxruntime").predict(clips)
    torch_logits = load_predictor(tiny_bundle, backend="torch").predict(clips)
    assert ort_logits.shape == (batch, 6) and ort_logits.dtype == np.float32
    np.testing.assert_allclose(ort_logits, torch_logits, rtol=1e-4, atol=1e-5)


def test_predict_splits_batches_over_max(tiny_bundle):
    predictor = load_predictor(tiny_bundle, backend="onnxruntime")
    clips = np.random.default_rng(0).standard_normal((5, 3, 8, 32, 32)).astype(np.float32)
    whole = predictor.predict(clips)
    predictor.max_batch = 2
    np.testing.assert_allclose(predictor.predict(clips), whole, rtol=1e-5, atol=1e-6)


def test_predict_rejects_wrong_shape(tiny_bundle):
    predictor = load_predictor(tiny_bundle, backend="torch")
    with pytest.raises(ValueError, match=r"\[N, 3, 8, 32, 32\]"):
        predictor.predict(np.zeros((2, 3, 4, 32, 32), np.float32))


def test_top_k_averages_softmax_over_views(tiny_bundle):
    predictor = load_predictor(tiny_bundle, backend="torch")
    logits = np.array([[10.0, 0, 0, 0, 0, 0], [0, 10.0, 0, 0, 0, 0]])  # two views disagree
    top = predictor.top_k(logits, top_k=2)
    assert {t["index"] for t in top} == {0, 1}
    assert top[0]["score"] == pytest.approx(top[1]["score"]) and top[0]["score"] < 0.5
    for bad in (0, 7, 2.5):
        with pytest.raises(ValueError, match="top_k"):
            predictor.top_k(logits, top_k=bad)


def test_views_layout(tiny_bundle, video):
    predictor = load_predictor(tiny_bundle, backend="onnxruntime")
    assert predictor.view_layout(None) == (1, 1)
    assert predictor.view_layout(3) == (3, 1)  # the synthetic recipe has one temporal view: k means k crops
    assert predictor.preprocess(video, views=3).clips.shape == (3, 3, 8, 32, 32)
    for bad in (2, 0, -1, "3"):
        with pytest.raises(ValueError, match="views"):
            predictor.view_layout(bad)


def test_auto_picks_onnxruntime_cpu_here(tiny_bundle):
    predictor = load_predictor(tiny_bundle)
    assert predictor.backend == "onnxruntime-cpu"  # no GPU on CI: fastest CPU backend the bundle holds


def test_unknown_backend(tiny_bundle):
    with pytest.raises(ValueError, match="unknown backend 'tflite'"):
        load_predictor(tiny_bundle, backend="tflite")


def test_tensorrt_backend_says_what_is_missing(tiny_bundle):
    pytest.importorskip("torch")
    from stadapter_deploy.runtime.tensorrt_build import tensorrt_missing

    if tensorrt_missing() is None:
        pytest.skip("TensorRT is available here")
    with pytest.raises(ValueError, match="tensorrt asked for"):
        load_predictor(tiny_bundle, backend="tensorrt")


@pytest.mark.parametrize("damage", ["modify", "truncate", "delete"])
def test_tampered_bundle_refused(tiny_bundle, tmp_path, damage):
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    target = copy / "model.onnx"
    data = target.read_bytes()
    if damage == "modify":
        target.write_bytes(data[:1000] + bytes([data[1000] ^ 1]) + data[1001:])
    elif damage == "truncate":
        target.write_bytes(data[: len(data) // 2])
    else:
        target.unlink()
    with pytest.raises(BundleError, match="model.onnx"):
        load_predictor(copy, backend="torch")


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="not a directory"):
        load_predictor(tmp_path / "nowhere")
    with pytest.raises(BundleError, match="no manifest.json"):
        load_predictor(tmp_path)


def test_import_is_lazy():
    code = (
        "import sys, stadapter_deploy, stadapter_deploy.runtime\n"
        "heavy = [m for m in ('onnxruntime', 'onnx', 'tensorrt') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
