"""Training augmentations of the reference recipes (docs/method.md), without torchvision.

All randomness comes from the numpy Generator passed in, so a clip is a pure function of its seed.
- "k400": short side scaled to a random size in [1.0, 1.15] x size, random square crop, horizontal flip.
- "ssv2": RandAugment `rand-m7-n4-mstd0.5-inc1` (the same ops for every frame of a clip, via PIL), then
  random resized crop (area 0.08 to 1, aspect 3/4 to 4/3), no flip (left/right is part of the labels).
- "none": the eval transform's single center crop (the synthetic recipe: motion direction is the label).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

from ..preprocessing import CLIP_MEAN, CLIP_STD
from .transforms import Stats, eval_transform, normalize, resize, short_side_size

AUGMENTS = ("k400", "ssv2", "none")


def train_transform(
    frames: np.ndarray,
    size: int,
    augment: str,
    rng: np.random.Generator,
    mean: Stats = CLIP_MEAN,
    std: Stats = CLIP_STD,
) -> torch.Tensor:
    """uint8 frames [T, H, W, 3] -> normalized float clip [3, T, size, size]."""
    if augment == "k400":
        return short_side_jitter_crop_flip(normalize(frames, mean, std), size, rng)
    if augment == "ssv2":
        frames = rand_augment(frames, rng, magnitude=7, num_ops=4, magnitude_std=0.5)
        return random_resized_crop(normalize(frames, mean, std), size, rng)
    if augment == "none":
        return eval_transform(frames, size, 1, mean, std)[0]
    raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")


def short_side_jitter_crop_flip(
    x: torch.Tensor, size: int, rng: np.random.Generator, scale: tuple[float, float] = (1.0, 1.15)
) -> torch.Tensor:
    """[3, T, H, W] -> [3, T, size, size]."""
    short = int(round(rng.uniform(round(size * scale[0]), round(size * scale[1]))))
    x = resize(x, *short_side_size(x.shape[-2], x.shape[-1], short))
    h, w = x.shape[-2:]
    top = int(rng.integers(0, h - size + 1))
    left = int(rng.integers(0, w - size + 1))
    x = x[..., top : top + size, left : left + size]
    if rng.random() < 0.5:
        x = x.flip(-1)
    return x.contiguous()


def random_resized_crop(
    x: torch.Tensor,
    size: int,
    rng: np.random.Generator,
    area: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """[3, T, H, W] -> [3, T, size, size]: a random box of the given area/aspect ranges, resized."""
    h, w = x.shape[-2:]
    box = None
    for _ in range(10):
        target = h * w * rng.uniform(*area)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        bw, bh = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < bw <= w and 0 < bh <= h:
            box = (int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1)), bh, bw)
            break
    if box is None:  # fall back to the largest centered square
        side = min(h, w)
        box = ((h - side) // 2, (w - side) // 2, side, side)
    top, left, bh, bw = box
    return resize(x[..., top : top + bh, left : left + bw], size, size).contiguous()


# RandAugment, "increasing" op set (inc1): a larger magnitude is always a stronger change.
_FILL = (124, 116, 104)  # the CLIP mean as uint8, for pixels uncovered by geometric ops


def _signed(rng: np.random.Generator, value: float) -> float:
    return -value if rng.random() < 0.5 else value


def _affine(img: Image.Image, coeffs: tuple) -> Image.Image:
    return img.transform(img.size, Image.AFFINE, coeffs, resample=Image.BICUBIC, fillcolor=_FILL)


def _solarize_add(img: Image.Image, add: int) -> Image.Image:
    lut = [min(255, i + add) if i < 128 else i for i in range(256)]
    return img.point(lut * 3)


def _op(name: str, m: float, rng: np.random.Generator):
    """One op as a function Image -> Image, with its random sign drawn now (shared by all frames)."""
    level = m / 10.0
    if name == "AutoContrast":
        return ImageOps.autocontrast
    if name == "Equalize":
        return ImageOps.equalize
    if name == "Invert":
        return ImageOps.invert
    if name == "Rotate":
        degrees = _signed(rng, level * 30.0)
        return lambda img: img.rotate(degrees, resample=Image.BICUBIC, fillcolor=_FILL)
    if name == "Posterize":
        bits = 4 - int(level * 4)
        return lambda img: img if bits >= 8 else ImageOps.posterize(img, max(bits, 1))
    if name == "Solarize":
        threshold = 256 - int(level * 256)
        return lambda img: ImageOps.solarize(img, threshold)
    if name == "SolarizeAdd":
        add = int(level * 110)
        return lambda img: _solarize_add(img, add)
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        factor = 1.0 + _signed(rng, level * 0.9)
        enhancer = getattr(ImageEnhance, name)
        return lambda img: enhancer(img).enhance(factor)
    if name == "ShearX":
        shear = _signed(rng, level * 0.3)
        return lambda img: _affine(img, (1, shear, 0, 0, 1, 0))
    if name == "ShearY":
        shear = _signed(rng, level * 0.3)
        return lambda img: _affine(img, (1, 0, 0, shear, 1, 0))
    if name == "TranslateX":
        pct = _signed(rng, level * 0.45)
        return lambda img: _affine(img, (1, 0, pct * img.size[0], 0, 1, 0))
    if name == "TranslateY":
        pct = _signed(rng, level * 0.45)
        return lambda img: _affine(img, (1, 0, 0, 0, 1, pct * img.size[1]))
    raise ValueError(name)


RAND_OPS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "Solarize",
    "SolarizeAdd",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
)


def rand_augment(
    frames: np.ndarray,
    rng: np.random.Generator,
    magnitude: float = 7,
    num_ops: int = 4,
    magnitude_std: float = 0.5,
    prob: float = 0.5,
) -> np.ndarray:
    """uint8 frames [T, H, W, 3] -> augmented uint8 frames: `num_ops` ops drawn with replacement, each
    applied with probability `prob` at a magnitude drawn around `magnitude` (std `magnitude_std`,
    clipped to [0, 10]); the same choices for every frame so motion stays intact."""
    ops = []
    for name in rng.choice(RAND_OPS, size=num_ops):
        if rng.random() >= prob:
            continue
        m = float(np.clip(rng.normal(magnitude, magnitude_std), 0.0, 10.0))
        ops.append(_op(str(name), m, rng))
    if not ops:
        return frames
    out = []
    for frame in frames:
        img = Image.fromarray(frame)
        for op in ops:
            img = op(img)
        out.append(np.asarray(img.convert("RGB")))
    return np.stack(out)
