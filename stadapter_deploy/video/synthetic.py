"""Synthetic motion clips: 6 classes told apart only by motion and its time order.

Each clip shows a textured bright square on a noisy background. The classes come in time-reversed
pairs: moving left / right, moving up / down (the square wraps around the frame edges), approaching /
receding (the square grows / shrinks in place). Positions are uniform over the frame (wrap-around keeps
them uniform at every frame) and a translating square's size is drawn from the same range the growing
one sweeps, so every single frame has the same distribution in every class. Any per-frame feature,
averaged over time, has the same class-conditional mean: a frame-level model without temporal modeling
sits near chance, while the order of frames gives the class away.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import av
import numpy as np

from ..progress import progress_bar

CLASS_NAMES = ["moving left", "moving right", "moving up", "moving down", "approaching", "receding"]
SPEED = 3.0  # pixels per frame for the translating classes
MIN_SIDE, MAX_SIDE = 8, 24  # square side range (pixels); the scaling classes sweep it


def _texture(rng: np.random.Generator, side: int, color: np.ndarray) -> np.ndarray:
    """A bright checker-like texture [side, side, 3]: a random 4x4 pattern scaled up (nearest)."""
    pattern = rng.uniform(0.75, 1.0, size=(4, 4, 1))
    cells = np.minimum(np.arange(side) * 4 // side, 3)
    return (pattern[cells][:, cells] * color).astype(np.uint8)  # [side, side, 3]


@dataclass
class MotionPlan:
    """What one clip shows, drawn from its seed: the background, the square's colour and texture, and
    where the square is in each frame."""

    background: np.ndarray  # [H, W, 3] float
    color: np.ndarray  # [3]
    pattern_seed: int
    xs: np.ndarray  # [T] the square's centre, pixels (wraps around the frame)
    ys: np.ndarray  # [T]
    sides: np.ndarray  # [T] its side, pixels

    def square(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cols) the square covers in frame i, wrapped around the frame edges."""
        height, width = self.background.shape[:2]
        side = int(round(self.sides[i]))
        rows = (int(round(self.ys[i] - side / 2)) + np.arange(side)) % height
        cols = (int(round(self.xs[i] - side / 2)) + np.arange(side)) % width
        return rows, cols


def plan_motion(rng: np.random.Generator, label: int, size: tuple[int, int], num_frames: int) -> MotionPlan:
    """Draw one clip's plan from `rng` (which then goes on to draw the frames' noise)."""
    if not 0 <= label < len(CLASS_NAMES):
        raise ValueError(f"label must be in [0, {len(CLASS_NAMES)}), got {label}")
    width, height = size
    background = rng.normal(90, 25, size=(height, width, 3))
    color = rng.uniform(200, 255, size=3)
    pattern_seed = int(rng.integers(2**31))
    x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
    t = np.arange(num_frames)
    sweep = MIN_SIDE + (MAX_SIDE - MIN_SIDE) * t / max(num_frames - 1, 1)  # growing sides
    fixed = np.full(num_frames, rng.uniform(MIN_SIDE, MAX_SIDE))
    xs, ys, sides = np.full(num_frames, x0), np.full(num_frames, y0), fixed
    if label == 0:
        xs = x0 - SPEED * t
    elif label == 1:
        xs = x0 + SPEED * t
    elif label == 2:
        ys = y0 - SPEED * t
    elif label == 3:
        ys = y0 + SPEED * t
    else:
        sides = sweep if label == 4 else sweep[::-1]
    return MotionPlan(background, color, pattern_seed, xs, ys, sides)


def render_motion_frames(label: int, seed: int, size: tuple[int, int] = (64, 48), num_frames: int = 16) -> np.ndarray:
    """uint8 RGB frames [T, H, W, 3] of one clip of class `label` (deterministic in `seed`)."""
    rng = np.random.default_rng([seed, label])
    plan = plan_motion(rng, label, size, num_frames)
    frames = np.empty((num_frames, size[1], size[0], 3), dtype=np.uint8)
    for i in range(num_frames):
        frame = plan.background + rng.normal(0, 6, size=plan.background.shape)
        rows, cols = plan.square(i)
        frame[np.ix_(rows, cols)] = _texture(np.random.default_rng(plan.pattern_seed), len(rows), plan.color)
        frames[i] = np.clip(frame, 0, 255).astype(np.uint8)
    return frames


def square_masks(label: int, seed: int, size: tuple[int, int] = (64, 48), num_frames: int = 16) -> np.ndarray:
    """Where the moving square is in each frame of `render_motion_frames(label, seed, size, num_frames)`:
    bool [T, H, W] (the object a heatmap should find)."""
    plan = plan_motion(np.random.default_rng([seed, label]), label, size, num_frames)
    masks = np.zeros((num_frames, size[1], size[0]), dtype=bool)
    for i in range(num_frames):
        masks[i][np.ix_(*plan.square(i))] = True
    return masks


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int = 8) -> Path:
    """Encode uint8 RGB frames [T, H, W, 3]: H.264 yuv420p for .mp4 (and others), VP9 for .webm."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    webm = path.suffix.lower() == ".webm"
    with av.open(str(path), mode="w") as container:
        if webm:
            stream = container.add_stream("libvpx-vp9", rate=fps, options={"deadline": "realtime", "cpu-used": "8"})
        else:
            stream = container.add_stream("libx264", rate=fps, options={"preset": "veryfast", "crf": "18"})
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.thread_count = 1
        for image in frames:
            # Converted to yuv420p here: left to the encoder, about 1 clip in 10 of a dataset came out with
            # other bytes from one generation to the next; now about 1 in 100 still does (H.264 through PyAV
            # is not byte-for-byte repeatable), so regenerated data can differ in a clip or two.
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def write_motion_video(
    path: str | os.PathLike,
    label: int,
    seed: int,
    size: tuple[int, int] = (64, 48),
    num_frames: int = 16,
    fps: int = 8,
) -> Path:
    """Write one synthetic clip of class `label` (see `render_motion_frames`) to `path`."""
    return write_video(path, render_motion_frames(label, seed, size, num_frames), fps)


def _write_job(job: tuple) -> None:
    write_motion_video(*job)


def clip_seed(split: str, i: int, seed: int = 0) -> int:
    """The seed of clip i of a split ("train" or "val") of `make_synthetic_dataset(..., seed=seed)`; its
    label is i mod 6. With `square_masks` it says where the moving object of each dataset clip is."""
    return seed * 10_000_000 + {"train": 0, "val": 1_000_000}[split] + i


def make_synthetic_dataset(
    root: str | os.PathLike,
    num_train: int = 600,
    num_val: int = 120,
    seed: int = 0,
    size: tuple[int, int] = (64, 48),
    num_frames: int = 16,
    webm: bool = False,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Write `root/videos/*`, `root/train.txt`, `root/val.txt` (`<relative path> <label>`), `root/classes.txt`.

    Classes are balanced (label = index mod 6); every clip has its own seed, so the data are the same
    for the same arguments on any machine.
    """
    root = Path(root)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    suffix = ".webm" if webm else ".mp4"
    jobs, lists = [], {}
    for split, count in (("train", num_train), ("val", num_val)):
        lines = []
        for i in range(count):
            label, rel = i % len(CLASS_NAMES), f"videos/{split}_{i:05d}{suffix}"
            jobs.append((root / rel, label, clip_seed(split, i, seed), size, num_frames))
            lines.append(f"{rel} {label}\n")
        lists[split] = "".join(lines)
    workers = workers or min(len(os.sched_getaffinity(0)), 8)
    bar = progress_bar(len(jobs), "synthetic videos", enabled=progress, unit="clip")
    if workers > 1 and len(jobs) > 8:
        with Pool(workers) as pool:
            for _ in pool.imap_unordered(_write_job, jobs, chunksize=8):
                bar.update()
    else:
        for job in jobs:
            _write_job(job)
            bar.update()
    bar.close()
    for split, text in lists.items():
        (root / f"{split}.txt").write_text(text)
    (root / "classes.txt").write_text("".join(f"{name}\n" for name in CLASS_NAMES))
    return root
