"""The eval transform of the reference recipes (docs/method.md) and its inverse for display.

Frames are normalized first, then resized as floats (bicubic, no antialias, no clamping), then cropped,
exactly as the reference evaluates. Training augmentations live in `augment.py`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..preprocessing import CLIP_MEAN, CLIP_STD

Stats = tuple[float, float, float]


def normalize(frames: np.ndarray | torch.Tensor, mean: Stats = CLIP_MEAN, std: Stats = CLIP_STD) -> torch.Tensor:
    """uint8 frames [T, H, W, 3] -> normalized float32 [3, T, H, W] (CLIP's mean and std by default)."""
    x = torch.as_tensor(frames).float().div_(255.0)  # [T, H, W, 3]; in place: one float copy of a 4K frame
    x.sub_(torch.tensor(mean)).div_(torch.tensor(std))
    return x.permute(3, 0, 1, 2).contiguous()  # [3, T, H, W]


def denormalize(clips: torch.Tensor | np.ndarray, mean: Stats = CLIP_MEAN, std: Stats = CLIP_STD) -> np.ndarray:
    """Normalized clips [..., 3, T, H, W] -> uint8 frames [..., T, H, W, 3] for display."""
    x = torch.as_tensor(clips).float()
    x = x.movedim(-4, -1)  # [..., T, H, W, 3]
    x = x * torch.tensor(std) + torch.tensor(mean)
    return (x * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()


def short_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(new_h, new_w) with the short side at `size`; the long side scales by floor, as the reference."""
    if height < width:
        return size, width * size // height
    return height * size // width, size


def resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bicubic resize of float frames [3, T, H, W] (frames are the batch axis, channels are planes)."""
    if x.shape[-2:] == (height, width):
        return x
    out = F.interpolate(x.transpose(0, 1), size=(height, width), mode="bicubic", align_corners=False)
    return out.transpose(0, 1)  # [3, T, height, width]


def crop_offsets(long_side: int, size: int, spatial_views: int) -> list[int]:
    """Offsets along the long side: 1 view = center, 3 views = start, middle, end."""
    margin = long_side - size
    if spatial_views == 1:
        return [margin // 2]
    if spatial_views == 3:
        return [0, margin // 2, margin]
    raise ValueError(f"spatial_views must be 1 or 3, got {spatial_views}")


def spatial_crops(x: torch.Tensor, size: int, spatial_views: int = 1) -> list[torch.Tensor]:
    """Square crops of a short-side-resized clip [3, T, H, W] -> list of [3, T, size, size]."""
    h, w = x.shape[-2:]
    if spatial_views == 1:  # center crop on both axes
        top, left = (h - size) // 2, (w - size) // 2
        return [x[..., top : top + size, left : left + size]]
    crops = []
    for offset in crop_offsets(max(h, w), size, spatial_views):
        if h > w:
            crops.append(x[..., offset : offset + size, :])
        else:
            crops.append(x[..., :, offset : offset + size])
    return crops


def eval_transform(
    frames: np.ndarray | torch.Tensor, size: int, spatial_views: int = 1, mean: Stats = CLIP_MEAN, std: Stats = CLIP_STD
) -> list[torch.Tensor]:
    """uint8 frames [T, H, W, 3] -> `spatial_views` normalized clips [3, T, size, size].

    Frame by frame, so a 4K video never holds more than one full-size float frame.
    """
    new_size = short_side_size(frames.shape[1], frames.shape[2], size)
    x = torch.cat([resize(normalize(frames[t : t + 1], mean, std), *new_size) for t in range(len(frames))], dim=1)
    return spatial_crops(x, size, spatial_views)  # x: [3, T, H', W']
