"""Eval transform (normalize -> bicubic short side -> crops), denormalize, and the view order."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stadapter_deploy.video import CLIP_MEAN, CLIP_STD, decode_frames, denormalize, prepare_eval_views
from stadapter_deploy.video.transforms import eval_transform, normalize

MEAN, STD = torch.tensor(CLIP_MEAN), torch.tensor(CLIP_STD)


def reference_resized(frames: np.ndarray, size: int) -> torch.Tensor:
    """Written out independently: [T, H, W, 3] uint8 -> normalized, bicubic short side -> [3, T, H', W']."""
    x = (torch.from_numpy(frames).float() / 255 - MEAN) / STD  # [T, H, W, 3]
    x = x.permute(3, 0, 1, 2)  # [3, T, H, W]
    h, w = x.shape[-2:]
    new = (size, w * size // h) if h < w else (h * size // w, size)
    return F.interpolate(x, size=new, mode="bicubic", align_corners=False)


@pytest.fixture
def frames():
    return np.random.default_rng(0).integers(0, 256, size=(4, 48, 64, 3), dtype=np.uint8)


def test_normalization_is_clip():
    flat = np.full((1, 8, 8, 3), 200, dtype=np.uint8)
    x = normalize(flat)  # [3, 1, 8, 8]
    assert x.shape == (3, 1, 8, 8)
    assert torch.allclose(x[:, 0, 0, 0], (200 / 255 - MEAN) / STD)


def test_center_crop_landscape(frames):
    (clip,) = eval_transform(frames, 32, 1)
    full = reference_resized(frames, 32)  # [3, 4, 32, 42]
    assert full.shape[-2:] == (32, 42)
    assert clip.shape == (3, 4, 32, 32)
    torch.testing.assert_close(clip, full[..., :, 5:37])


def test_three_crops_along_long_side(frames):
    crops = eval_transform(frames, 32, 3)
    full = reference_resized(frames, 32)  # margin 10: offsets 0, 5, 10
    for crop, offset in zip(crops, (0, 5, 10), strict=True):
        torch.testing.assert_close(crop, full[..., :, offset : offset + 32])
    portrait = np.ascontiguousarray(frames.transpose(0, 2, 1, 3))  # [T, 64, 48, 3]
    full = reference_resized(portrait, 32)  # [3, T, 42, 32]
    for crop, offset in zip(eval_transform(portrait, 32, 3), (0, 5, 10), strict=True):
        torch.testing.assert_close(crop, full[..., offset : offset + 32, :])


def test_no_clamping_after_bicubic():
    step = np.zeros((1, 16, 16, 3), dtype=np.uint8)
    step[:, :, 8:] = 255  # a hard edge, upsampled: bicubic overshoots on both sides of it
    (clip,) = eval_transform(step, 40, 1)
    white = (1 - MEAN) / STD
    black = (0 - MEAN) / STD
    assert (clip.amax(dim=(1, 2, 3)) > white + 1e-3).all()
    assert (clip.amin(dim=(1, 2, 3)) < black - 1e-3).all()


def test_denormalize_inverts_normalize(frames):
    back = denormalize(normalize(frames))  # [T, H, W, 3]
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, frames)
    assert denormalize(torch.zeros(2, 3, 4, 8, 8)).shape == (2, 4, 8, 8, 3)


def test_view_order_is_spatial_major(motion_video):
    ev = prepare_eval_views(motion_video, num_frames=4, sampling_rate=2, spatial_views=3, temporal_views=2, size=32)
    assert ev.clips.shape == (6, 3, 4, 32, 32)
    assert ev.clips.dtype == torch.float32
    assert ev.num_video_frames == 16
    # n=16, T=4, r=2: length 7, slide 9; views start at 0 and 9
    assert ev.frame_indices == [[0, 2, 4, 6], [9, 11, 13, 15]]
    assert set(ev.timings_ms) == {"decode", "preprocess"}
    for t, indices in enumerate(ev.frame_indices):
        crops = eval_transform(decode_frames(motion_video, indices), 32, 3)
        for s in range(3):
            torch.testing.assert_close(ev.clips[s * 2 + t], crops[s])
