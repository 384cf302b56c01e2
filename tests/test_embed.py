"""Clip embeddings: the pooled features the head reads, from every backend at no extra model call (the
ONNX `features` output, parity-gated like the logits), Predictor.embed, the feature index and its nearest
neighbours; on the trained synthetic model a clip's nearest neighbour has its class."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import copy_bundle, rewrite_manifest

from stadapter_deploy.errors import BundleError
from stadapter_deploy.export.onnx_export import export_onnx
from stadapter_deploy.export.parity import CheckInputs, check_artifact
from stadapter_deploy.model import build_model
from stadapter_deploy.runtime.bundle import file_entry, load_bundle
from stadapter_deploy.runtime.predictor import load_predictor
from stadapter_deploy.runtime.runner import Outputs
from stadapter_deploy.runtime.runners.torch_runner import load_torch_model
from stadapter_deploy.runtime.similar import FeatureIndex, cosine_neighbours, model_id


def nearest_neighbour_accuracy(embeddings: np.ndarray, labels: list[int]) -> float:
    """Leave-one-out: the share of clips whose nearest other clip by cosine has their class."""
    rows, _ = cosine_neighbours(embeddings, embeddings, k=1, exclude_self=True)
    return float((np.asarray(labels)[rows[:, 0]] == np.asarray(labels)).mean())


def test_a_clips_nearest_neighbour_has_its_class(trained_bundle, synthetic_val):
    """Issue 26's check: on the synthetic validation set the nearest neighbour by cosine has the query's
    class for at least 90 % of the clips; the frozen backbone alone (adapters off) cannot tell the motions."""
    predictor = load_predictor(trained_bundle, backend="onnxruntime")
    labels = [label for _, label, _ in synthetic_val]
    embeddings = np.stack([predictor.embed(path) for path, _, _ in synthetic_val])  # [N, D]
    assert embeddings.shape == (len(synthetic_val), predictor.feature_dim)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
    trained = nearest_neighbour_accuracy(embeddings, labels)

    backbone = load_torch_model(load_bundle(trained_bundle))
    with torch.no_grad():
        for block in backbone.transformer.resblocks:  # a zero fc2 makes an adapter the identity
            for adapter in (block.adapter_pre_attn, block.adapter_pre_mlp):
                if adapter is not None:
                    adapter.fc2.weight.zero_()
                    adapter.fc2.bias.zero_()
        clips = torch.cat([predictor.preprocess(path).clips for path, _, _ in synthetic_val])
        alone = nearest_neighbour_accuracy(backbone.features(clips).numpy(), labels)
    print(f"\nnearest neighbour has the query's class, {len(labels)} val clips: {trained:.1%} with the adapters, ")
    print(f"{alone:.1%} for the frozen backbone alone (chance {1 / 6:.1%})")
    assert trained >= 0.9
    assert alone < 0.5


@pytest.fixture(scope="module")
def every_precision(tmp_path_factory):
    """A tiny bundle with fp32, fp16 and int8 ONNX files, parity-gated."""
    from helpers import make_tiny_checkpoint

    from stadapter_deploy.export.exporter import ExportOptions, export_bundle, load_source

    folder = tmp_path_factory.mktemp("precisions")
    options = ExportOptions(fp16=True, int8=True, progress=False, check_videos=2, check_random=2)
    return export_bundle(load_source(checkpoint=make_tiny_checkpoint(folder / "ckpt")), folder / "bundle", options).path


def test_every_artifact_lists_and_gives_features_within_its_gate(every_precision, motion_video):
    bundle = load_bundle(every_precision)
    assert [(a["file"], a["outputs"]) for a in bundle.artifacts] == [
        (name, ["logits", "features"])
        for name in ("model.safetensors", "model.onnx", "model.fp16.onnx", "model.int8.onnx")
    ]
    for artifact in bundle.artifacts:
        figures = artifact["parity"]["features"]
        assert artifact["parity"]["passed"] and figures["clips"]["n"] == 2 and figures["random"]["n"] == 2
        if artifact["precision"] == "fp32":
            assert max(figures[p]["rel_diff"] for p in ("clips", "random")) <= 1e-4
    clips = np.random.default_rng(3).standard_normal((3, 3, 8, 32, 32)).astype(np.float32)
    reference = load_predictor(bundle, backend="torch").predict_with_features(clips)
    for precision, bound in (("fp32", 1e-4), ("fp16", 1e-2), ("int8", 0.2)):
        predictor = load_predictor(bundle, backend="onnxruntime", precision=precision)
        out = predictor.predict_with_features(clips)
        assert out.features.shape == (3, 64) and out.features.dtype == np.float32
        np.testing.assert_array_equal(out.logits, predictor.predict(clips))  # the same model call's logits
        scale = np.abs(reference.features).max()
        assert np.abs(out.features - reference.features).max() <= bound * scale, precision
    assert "model.int8.onnx" in (every_precision / "README.md").read_text()


def test_embed_is_the_views_features_averaged_and_normalised(tiny_bundle, motion_video):
    for backend in ("torch", "onnxruntime"):
        predictor = load_predictor(tiny_bundle, backend=backend)
        views = predictor.preprocess(motion_video, views=3).clips
        features = predictor.predict_with_features(views).features  # [3, D]
        mean = features.mean(0)
        embedding = predictor.embed(motion_video, views=3)
        np.testing.assert_allclose(embedding, mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-6)
        result = predictor.classify(motion_video, views=3, features=True)
        np.testing.assert_allclose(result.features, embedding, rtol=1e-6)
        assert result.to_dict()["features"] == result.features
        assert "features" not in predictor.classify(motion_video).to_dict()  # only when asked for
    torch_embedding = load_predictor(tiny_bundle, backend="torch").embed(motion_video)
    ort_embedding = load_predictor(tiny_bundle, backend="onnxruntime").embed(motion_video)
    np.testing.assert_allclose(ort_embedding, torch_embedding, atol=1e-5)


@pytest.fixture
def bundle_before_embeddings(tiny_bundle, tmp_path):
    """The tiny bundle as exported before issue 26: its ONNX gives logits only, its manifest lists logits."""
    copy = copy_bundle(tiny_bundle, tmp_path / "old")
    export_onnx(load_torch_model(load_bundle(copy)), copy / "model.onnx", features=False)

    def as_old(manifest):
        for artifact in manifest["artifacts"]:
            artifact["outputs"] = ["logits"]
            if artifact["file"] == "model.onnx":
                artifact.update(file_entry(copy, "model.onnx"))

    rewrite_manifest(copy, as_old)
    return copy


def test_a_bundle_from_before_embeddings_classifies_and_says_to_export_again(
    bundle_before_embeddings, tiny_bundle, motion_video
):
    old = load_predictor(bundle_before_embeddings, backend="onnxruntime")
    new = load_predictor(tiny_bundle, backend="onnxruntime")
    assert not old.has_features and new.has_features
    assert old.classify(motion_video).labels == new.classify(motion_video).labels
    for call in (lambda: old.embed(motion_video), lambda: old.classify(motion_video, features=True)):
        with pytest.raises(BundleError) as refused:
            call()
        message = str(refused.value)
        assert "\n" not in message and "exported before embeddings" in message
        assert "export the bundle again with stadapter-export" in message
    # the torch backend reads the weights, which have everything
    np.testing.assert_allclose(
        load_predictor(bundle_before_embeddings, backend="torch").embed(motion_video),
        new.embed(motion_video),
        atol=1e-5,
    )


def test_the_gate_checks_the_features_too():
    rng = np.random.default_rng(0)
    inputs = CheckInputs(clips=np.zeros((2, 3, 8, 32, 32), np.float32), random=np.zeros((1, 3, 8, 32, 32), np.float32))
    reference = {
        part: Outputs(rng.standard_normal((n, 6)), rng.standard_normal((n, 64)))
        for part, n in [("clips", 2), ("random", 1)]
    }
    part = lambda x: "clips" if len(x) == 2 else "random"
    same = check_artifact(lambda x: reference[part(x)], reference, inputs, "fp32")
    assert same["passed"] and same["features"]["clips"]["max_abs_diff"] == 0
    logits_only = check_artifact(lambda x: reference[part(x)].logits, reference, inputs, "fp32")
    assert logits_only["failures"] == ["features: the artifact has no features output"]
    moved = lambda x: Outputs(reference[part(x)].logits, reference[part(x)].features * 1.01)
    assert any("max |feature diff|" in f for f in check_artifact(moved, reference, inputs, "fp32")["failures"])
    assert check_artifact(moved, reference, inputs, "fp16")["passed"]  # a scale does not move a cosine
    turned = lambda x: Outputs(reference[part(x)].logits, reference[part(x)].features[:, ::-1])
    assert any("feature cosine" in f for f in check_artifact(turned, reference, inputs, "int8")["failures"])


def test_onnx_features_of_the_wrong_width_are_refused_at_load(tiny_bundle, tmp_path):
    copy = copy_bundle(tiny_bundle, tmp_path / "wide")
    other = build_model("tiny", width=32, heads=2).eval()
    export_onnx(other, copy / "model.onnx")
    rewrite_manifest(copy, lambda m: m["artifacts"][1].update(file_entry(copy, "model.onnx")))
    with pytest.raises(BundleError, match=r"model.onnx outputs features of \[N, 32\], the config says 64"):
        load_bundle(copy)


def test_a_feature_index_finds_the_nearest_videos(tiny_bundle, tmp_path):
    bundle = load_bundle(tiny_bundle)
    rng = np.random.default_rng(0)
    features = rng.standard_normal((5, 64)).astype(np.float32)
    index = FeatureIndex([f"v{i}.mp4" for i in range(5)], features * 7, model_id(bundle))
    path = index.save(tmp_path / "archive")
    assert path.name == "archive.npy" and (tmp_path / "archive.json").is_file()
    loaded = FeatureIndex.load(path)
    np.testing.assert_allclose(np.linalg.norm(loaded.features, axis=1), 1.0, rtol=1e-6)
    query = features[3] + 0.1 * rng.standard_normal(64)
    matches = loaded.nearest(query, k=3)
    assert matches[0].video == "v3.mp4" and matches[0].row == 3 and len(matches) == 3
    assert matches[0].score > matches[1].score >= matches[2].score
    want = features @ query / (np.linalg.norm(features, axis=1) * np.linalg.norm(query))
    assert matches[0].score == pytest.approx(float(want.max()), rel=1e-5)
    assert [m.video for m in loaded.nearest(query, k=10)] == [f"v{i}.mp4" for i in np.argsort(-want)]
    loaded.check_model(model_id(bundle))
    other = dict(model_id(bundle), weights_sha256="0" * 64)
    with pytest.raises(BundleError, match="embeddings of different models do not compare"):
        loaded.check_model(other)
    with pytest.raises(ValueError, match="a query of 32 dimensions for an index of 64"):
        loaded.nearest(np.ones(32))

    meta = json.loads((tmp_path / "archive.json").read_text())
    (tmp_path / "archive.json").write_text(json.dumps(meta | {"videos": meta["videos"][:4]}))
    with pytest.raises(BundleError, match=r"4 videos in archive.json for an array of shape \[5, 64\]"):
        FeatureIndex.load(path)
    (tmp_path / "archive.json").unlink()
    with pytest.raises(BundleError, match="archive.json is missing"):
        FeatureIndex.load(path)
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "pickled.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="cannot be read"):  # no pickle is ever loaded
        FeatureIndex.load(tmp_path / "pickled.npy")
