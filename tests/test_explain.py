"""Predictor.explain: per-frame heatmaps of what drove a label, from the bundle's own fp32 torch weights, and
the PNG drawn from them; on the trained synthetic model the heat is on the moving square."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from stadapter_deploy.errors import BundleError
from stadapter_deploy.model.gradcam import heatmaps
from stadapter_deploy.runtime.explain import Explanation, centre_view, explain_views, render_explanation
from stadapter_deploy.runtime.predictor import load_predictor
from stadapter_deploy.video.pipeline import eval_views_from_frames
from stadapter_deploy.video.synthetic import CLASS_NAMES, square_masks
from stadapter_deploy.video.transforms import denormalize


def square_region(label: int, seed: int, frame_indices: list[int], pre) -> np.ndarray:
    """Where the moving square is in each frame the model saw: bool [T, S, S], the generator's square masks
    of those frames through the same resize and crop as the model input."""
    masks = square_masks(label, seed)[frame_indices]  # [T, H, W]
    frames = np.repeat(masks[..., None], 3, axis=-1).astype(np.uint8) * 255  # [T, H, W, 3]
    plain = pre.replace(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), spatial_views=1, temporal_views=1)
    return (eval_views_from_frames(frames, plain)[0, 0] > 0.5).numpy()  # [T, S, S]


def mass_ratio(heat: np.ndarray, region: np.ndarray) -> float:
    """The heatmap's mass inside the region over the region's share of the frames: 1 for a uniform map."""
    return float((heat * region).sum() / heat.sum() / region.mean())


def test_the_heat_is_on_the_moving_square(trained_bundle, synthetic_val):
    """Issue 26's check: the mass inside the moving object's region is at least 3x its share of the frame,
    averaged over the validation clips (and more than Grad-CAM's channel-averaged form gives)."""
    predictor = load_predictor(trained_bundle, backend="onnxruntime")  # explain runs torch all the same
    pre = predictor.preprocessing
    ratios, grad_cam_ratios, correct = [], [], 0
    for path, label, seed in synthetic_val:
        explanation = predictor.explain(path)
        region = square_region(label, seed, explanation.frame_indices, pre)
        if not region.any():  # the square is outside the centre crop in every frame
            continue
        correct += explanation.label_index == label
        ratios.append(mass_ratio(explanation.heatmaps, region))
        clips = predictor.preprocess(path).clips
        maps = heatmaps(predictor.torch_model(), clips, explanation.label_index, method="grad_cam").maps[0]
        grad_cam_ratios.append(mass_ratio(maps.numpy(), region))
    ratio, grad_cam_ratio = float(np.mean(ratios)), float(np.mean(grad_cam_ratios))
    print(f"\nheatmap mass in the moving square / its share of the frame, {len(ratios)} val clips: {ratio:.2f}x")
    print(f"Grad-CAM (channel weights averaged over each frame): {grad_cam_ratio:.2f}x; top-1 {correct}/{len(ratios)}")
    assert len(ratios) >= 0.9 * len(synthetic_val) and correct >= 0.9 * len(ratios)
    assert ratio >= 3.0
    assert ratio > grad_cam_ratio


def test_the_measure_fails_a_uniform_a_random_or_a_centred_map(synthetic_val, trained_bundle):
    predictor = load_predictor(trained_bundle, backend="onnxruntime")
    pre = predictor.preprocessing
    rng = np.random.default_rng(0)
    size = pre.size
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    centred = np.broadcast_to(np.exp(-(xx**2 + yy**2) / (2 * (size / 6) ** 2)), (pre.num_frames, size, size))
    uniform, random, centre = [], [], []
    for path, label, seed in synthetic_val[:36]:
        region = square_region(label, seed, predictor.preprocess(path).frame_indices[0], pre)
        if region.any():
            uniform.append(mass_ratio(np.ones(region.shape), region))
            random.append(mass_ratio(rng.random(region.shape), region))
            centre.append(mass_ratio(centred, region))
    assert np.mean(uniform) == pytest.approx(1.0)
    assert np.mean(random) < 1.5 and np.mean(centre) < 2.0, (np.mean(random), np.mean(centre))


def test_an_explanation_is_the_centre_view_with_classifys_label(tiny_bundle, motion_video):
    predictor = load_predictor(tiny_bundle, backend="onnxruntime")
    assert predictor._torch_model is None  # loaded on first use only
    explanation = predictor.explain(motion_video)
    assert isinstance(explanation, Explanation) and predictor._torch_model is not None
    T, S = predictor.preprocessing.num_frames, predictor.preprocessing.size
    assert explanation.frames.dtype == np.uint8 and explanation.frames.shape == (T, S, S, 3)
    assert explanation.heatmaps.dtype == np.float32 and explanation.heatmaps.shape == (T, S, S)
    assert explanation.heatmaps.min() >= 0 and explanation.heatmaps.max() == pytest.approx(1.0)
    assert explanation.heatmaps.std() > 0.01  # not uniform
    views = predictor.preprocess(motion_video)
    np.testing.assert_array_equal(explanation.frames, denormalize(views.clips[0]))
    assert explanation.frame_indices == views.frame_indices[0]
    top = predictor.classify(motion_video, top_k=1).labels[0]  # onnxruntime's scores; explain's are torch's
    assert (explanation.label_index, explanation.label) == (top["index"], top["label"])
    assert explanation.score == pytest.approx(top["score"], abs=1e-5)

    other = predictor.explain(motion_video, target=5)
    assert (other.label_index, other.label) == (5, CLASS_NAMES[5])
    scores = {x["index"]: x["score"] for x in predictor.classify(motion_video, top_k=6).labels}
    assert other.score == pytest.approx(scores[5], abs=1e-5)
    assert not np.array_equal(other.heatmaps, explanation.heatmaps)
    for bad in (6, -1, "1", True):
        with pytest.raises(ValueError, match="target must be a class index between 0 and 5"):
            predictor.explain(motion_video, target=bad)

    decoded = predictor.preprocess(motion_video)  # as a decode worker hands it over
    from_views = explain_views(predictor, decoded, target=5)
    np.testing.assert_array_equal(from_views.heatmaps, other.heatmaps)
    assert from_views.frame_indices == other.frame_indices
    with pytest.raises(ValueError, match="1 clips for views=3, which makes 3"):
        explain_views(predictor, decoded, views=3)

    three = predictor.explain(motion_video, views=3)  # three crops along the long side: the middle one
    crops = predictor.preprocess(motion_video, views=3).clips
    assert centre_view(3, 1) == (1, 0)
    np.testing.assert_array_equal(three.frames, denormalize(crops[1]))
    np.testing.assert_allclose(three.frames, explanation.frames)  # the middle crop is the centre crop


def test_the_torch_backend_explains_with_its_own_model(tiny_bundle, motion_video):
    predictor = load_predictor(tiny_bundle, backend="torch")
    predictor.explain(motion_video)
    assert predictor.torch_model() is predictor.runner.model


def test_heatmaps_do_not_change_the_logits_and_need_the_last_block_only(tiny_bundle, motion_video):
    predictor = load_predictor(tiny_bundle, backend="torch")
    model = predictor.torch_model()
    clips = predictor.preprocess(motion_video, views=3).clips
    maps = heatmaps(model, clips)
    with torch.no_grad():
        np.testing.assert_array_equal(maps.logits.numpy(), model(clips).numpy())
    assert maps.maps.shape == (3, 8, 32, 32)
    assert all(p.grad is None for p in model.parameters())  # no weight gradient was made
    one = heatmaps(model, clips[1:2], maps.target)  # the views are independent: each view's map is its own
    torch.testing.assert_close(one.maps[0], maps.maps[1], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="unknown heatmap method"):
        heatmaps(model, clips, method="rollout")


def test_the_png_shows_the_frames_the_heat_and_the_label(tiny_bundle, motion_video):
    explanation = load_predictor(tiny_bundle, backend="torch").explain(motion_video)
    png = render_explanation(explanation, tile=64, columns=4)
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (4 * 64 + 5 * 4, 28 + 2 * (64 + 18 + 4) + 4)
    pixels = np.asarray(image.convert("RGB")).astype(int)
    tile = pixels[28 : 28 + 64, 4 : 4 + 64]  # frame 0, with its heat
    hot = np.asarray(Image.fromarray(explanation.heatmaps[0]).resize((64, 64), Image.BILINEAR)) > 0.8
    cold = np.asarray(Image.fromarray(explanation.heatmaps[0]).resize((64, 64), Image.BILINEAR)) < 0.1
    plain = np.asarray(Image.fromarray(explanation.frames[0]).resize((64, 64), Image.BILINEAR)).astype(int)
    if hot.any():  # hot pixels are drawn over, cold ones show the frame
        assert np.abs(tile[hot] - plain[hot]).mean() > 20
    if cold.any():
        assert np.abs(tile[cold] - plain[cold]).mean() < 20
    title = pixels[:28]
    assert (title < 128).any()  # the label is written


def test_an_explanation_as_json_keeps_the_heatmaps_compact(tiny_bundle, motion_video):
    import base64

    explanation = load_predictor(tiny_bundle, backend="torch").explain(motion_video)
    d = explanation.to_dict()
    assert set(d) == {"label", "index", "score", "frames", "heatmaps"}
    maps = np.frombuffer(base64.b64decode(d["heatmaps"]["data"]), np.uint8).reshape(d["heatmaps"]["shape"])
    np.testing.assert_allclose(maps * d["heatmaps"]["scale"], explanation.heatmaps, atol=0.5 / 255 + 1e-6)


def test_a_bundle_without_torch_weights_cannot_explain(tiny_bundle, motion_video, tmp_path):
    from helpers import copy_bundle, rewrite_manifest

    copy = copy_bundle(tiny_bundle, tmp_path / "bundle")
    rewrite_manifest(copy, lambda m: m.update(artifacts=[a for a in m["artifacts"] if a["backend"] != "torch"]))
    predictor = load_predictor(copy, backend="onnxruntime")
    assert predictor.classify(motion_video).labels
    with pytest.raises(BundleError, match="holds no torch artifact"):
        predictor.explain(motion_video)
