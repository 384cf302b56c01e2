"""Runtime: bundle loading, the Predictor interface, and the same answers from every CPU backend."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from stadapter_deploy import BundleError, load_predictor
from stadapter_deploy.runtime import load_bundle
from stadapter_deploy.video import CLIP_MEAN, CLIP_STD


def torch_tensor(values):
    import torch

    return torch.tensor(values).view(1, 3, 1, 1, 1)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    from stadapter_deploy.video.synthetic import write_motion_video

    return write_motion_video(tmp_path_factory.mktemp("video") / "clip.mp4", label=2, seed=7)


def test_torch_and_onnxruntime_classify_the_same(tiny_bundle, video):
    backends = ("torch-cpu", "onnxruntime-cpu")  # named devices: the same on a machine with a GPU
    results = {b: load_predictor(tiny_bundle, backend=b).classify(video, top_k=6).to_dict() for b in backends}
    torch_res, ort_res = results["torch-cpu"], results["onnxruntime-cpu"]
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
    ort_logits = load_predictor(tiny_bundle, backend="onnxruntime-cpu").predict(clips)
    torch_logits = load_predictor(tiny_bundle, backend="torch-cpu").predict(clips)
    assert ort_logits.shape == (batch, 6) and ort_logits.dtype == np.float32
    np.testing.assert_allclose(ort_logits, torch_logits, rtol=1e-4, atol=1e-5)


def test_predict_splits_batches_over_max(tiny_bundle):
    predictor = load_predictor(tiny_bundle, backend="onnxruntime")
    clips = np.random.default_rng(0).standard_normal((5, 3, 8, 32, 32)).astype(np.float32)
    whole = predictor.predict(clips)
    predictor.runner.max_batch = 2
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


def test_auto_picks_the_fastest_runnable_backend(tiny_bundle):
    import torch

    predictor = load_predictor(tiny_bundle)
    if torch.cuda.is_available():  # the bundle holds no engine: ONNX Runtime's CUDA provider or torch on CUDA
        assert predictor.backend in ("onnxruntime-cuda", "torch-cuda")
    else:
        assert predictor.backend == "onnxruntime-cpu"  # the fastest CPU backend the bundle holds
        assert "passed over: tensorrt" in predictor.selection


def test_a_new_runner_is_one_class_and_one_registry_line(tiny_bundle, monkeypatch):
    from stadapter_deploy.runtime import RUNNERS, Runner

    class ConstantRunner(Runner):  # a stand-in engine: every clip gets the same logits
        name = "constant"

        @classmethod
        def available(cls, bundle, device):
            return None

        def __init__(self, bundle, device="cpu", precision="fp32", threads=None):
            self.num_classes = bundle.config.num_classes

        def run(self, clips):
            return np.tile(np.arange(self.num_classes, dtype=np.float32), (len(clips), 1))

    monkeypatch.setitem(RUNNERS, "constant", ConstantRunner)
    predictor = load_predictor(tiny_bundle, backend="constant")
    assert predictor.backend == "constant" and predictor.predict(np.zeros((2, 3, 8, 32, 32), np.float32)).shape == (
        2,
        6,
    )
    assert predictor.top_k(predictor.predict(np.zeros((1, 3, 8, 32, 32), np.float32)), 1)[0]["index"] == 5


def test_manifest_mean_and_std_normalize_the_input(tiny_bundle, tmp_path, video):
    import json

    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["preprocessing"] |= {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    clip_default = load_predictor(tiny_bundle, backend="torch-cpu").preprocess(video).clips
    clip_custom = load_predictor(copy, backend="torch-cpu").preprocess(video).clips
    pixels_default = clip_default * torch_tensor(CLIP_STD) + torch_tensor(CLIP_MEAN)  # both back to [0, 1] pixels
    pixels_custom = clip_custom * 0.25 + 0.5
    np.testing.assert_allclose(pixels_custom.numpy(), pixels_default.numpy(), atol=1e-5)
    assert not np.allclose(clip_custom.numpy(), clip_default.numpy(), atol=1e-2)


def test_unknown_backend(tiny_bundle):
    with pytest.raises(ValueError, match="unknown backend 'tflite'"):
        load_predictor(tiny_bundle, backend="tflite")


def test_tensorrt_backend_says_what_is_missing(tiny_bundle):
    pytest.importorskip("torch")
    from stadapter_deploy.runtime.runners.trt_runner import tensorrt_missing

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
        "import sys, stadapter_deploy, stadapter_deploy.runtime, stadapter_deploy.runtime.bundle\n"
        "heavy = [m for m in ('torch', 'onnxruntime', 'onnx', 'tensorrt') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
