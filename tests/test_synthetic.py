"""Synthetic motion data: real encoded files and lists; frames alone say nothing, their order says all."""

import numpy as np
import pytest
import torch

from stadapter_deploy.recipes import class_names
from stadapter_deploy.video import decode_frames, load_eval_views
from stadapter_deploy.video.decode import decord_available
from stadapter_deploy.video.listfile import read_video_list
from stadapter_deploy.video.synthetic import CLASS_NAMES, make_synthetic_dataset, render_motion_frames


def test_dataset_layout(synthetic_data):
    root = synthetic_data
    assert (root / "classes.txt").read_text().splitlines() == CLASS_NAMES == class_names("synthetic")
    train = read_video_list(root / "train.txt", root, 6)
    val = read_video_list(root / "val.txt", root, 6)
    assert len(train) == 12 and len(val) == 6
    assert sorted(label for _, label in train) == sorted(list(range(6)) * 2)
    path, _ = train[0]
    assert path.suffix == ".mp4" and path.is_file()
    assert load_eval_views(path, num_frames=8, size=32).shape == (1, 3, 8, 32, 32)


def test_same_seed_same_clip_and_webm_decodes_alike(tmp_path):
    np.testing.assert_array_equal(render_motion_frames(3, 7), render_motion_frames(3, 7))
    root = make_synthetic_dataset(tmp_path, num_train=6, num_val=0, webm=True, progress=False)
    (path, _), *_ = read_video_list(root / "train.txt", root, 6)
    assert path.suffix == ".webm"
    frames = decode_frames(path, range(16), decoder="pyav")
    assert frames.shape == (16, 48, 64, 3)
    if decord_available():
        np.testing.assert_array_equal(decode_frames(path, range(16), decoder="decord"), frames)


def clips(n_per_class: int, seed: int):
    """Pooled frames [N, T, 12, 16, 3] (4x4 average pooling), bright-square masks [N, T, 48, 64], labels [N]."""
    xs = np.stack([render_motion_frames(label, seed * 100_000 + i) for i in range(n_per_class) for label in range(6)])
    ys = np.array([label for _ in range(n_per_class) for label in range(6)])
    pooled = xs.reshape(*xs.shape[:2], 12, 4, 16, 4, 3).mean((3, 5), dtype=np.float32) / 255
    masks = xs.mean(-1, dtype=np.float32) > 140
    return pooled, masks, ys


def ridge_probe_accuracy(train_x, train_y, test_x, test_y, reg=10.0) -> float:
    """A linear probe (ridge regression on one-hot labels, solved in the N x N dual form), test accuracy."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = (train_x - mean) / std, (test_x - mean) / std  # [N, D], [M, D]
    onehot = np.eye(6)[train_y]
    alpha = np.linalg.solve(a @ a.T + reg * np.eye(len(a)), onehot)  # [N, 6]
    return float(((b @ (a.T @ alpha)).argmax(1) == test_y).mean())


@pytest.fixture(scope="module")
def probe_data():
    return clips(40, seed=0), clips(25, seed=1)  # 240 train, 150 test clips


def test_frame_level_features_sit_near_chance(probe_data):
    (train, _, ytr), (test, _, yte) = probe_data  # pooled frames [N, T, 12, 16, 3]
    mean_frame = lambda x: x.mean(1).reshape(len(x), -1)
    rng = np.random.default_rng(0)
    one_frame = lambda x: x[np.arange(len(x)), rng.integers(0, x.shape[1], len(x))].reshape(len(x), -1)
    proj = rng.normal(size=(12 * 16 * 3, 256)).astype(np.float32) / 24
    features = lambda x: np.maximum(x.reshape(*x.shape[:2], -1) @ proj - 0.5, 0).mean(1)  # per frame, then avg
    for name, f in [("mean frame", mean_frame), ("one frame", one_frame), ("avg frame features", features)]:
        acc = ridge_probe_accuracy(f(train), ytr, f(test), yte)
        assert acc < 0.32, f"{name}: {acc:.2f} (chance 0.17)"


def motion_features(mask: np.ndarray) -> np.ndarray:
    """Bright-square masks [N, T, H, W] -> [N, 3]: mean step of its circular centroid (x, y), size change."""
    h, w = mask.shape[-2:]
    ang_x = np.exp(2j * np.pi * np.arange(w) / w)
    ang_y = np.exp(2j * np.pi * np.arange(h) / h)
    cx = np.angle((mask * ang_x).sum((2, 3)))  # [N, T]
    cy = np.angle((mask * ang_y[:, None]).sum((2, 3)))
    step = lambda c: np.angle(np.exp(1j * np.diff(c, axis=1))).mean(1)
    area = mask.sum((2, 3))  # [N, T]
    return np.stack([step(cx) * w / (2 * np.pi), step(cy) * h / (2 * np.pi), (area[:, -1] - area[:, 0]) / 100], 1)


def test_time_order_tells_the_classes_apart(probe_data):
    (_, train, ytr), (_, test, yte) = probe_data  # masks [N, T, H, W]
    acc = ridge_probe_accuracy(motion_features(train), ytr, motion_features(test), yte, reg=1e-3)
    assert acc > 0.9
    # playing a clip backwards turns it into its pair: left<->right, up<->down, approach<->recede
    reverse = motion_features(test[:, ::-1])
    pair = yte ^ 1
    centroids = np.stack([motion_features(train)[ytr == c].mean(0) for c in range(6)])
    nearest = np.linalg.norm(reverse[:, None] - centroids[None], axis=-1).argmin(1)
    assert (nearest == pair).mean() > 0.9


def test_unknown_label():
    with pytest.raises(ValueError):
        render_motion_frames(6, 0)


def test_tiny_model_input_shape(synthetic_data):
    from stadapter_deploy import build_model

    (path, _), *_ = read_video_list(synthetic_data / "val.txt", synthetic_data, 6)
    model = build_model("tiny").eval()
    with torch.no_grad():
        assert model(load_eval_views(path, size=32)).shape == (1, 6)
