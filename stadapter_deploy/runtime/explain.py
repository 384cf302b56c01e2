"""Why the model said it: per-frame heatmaps of where the evidence for a class lies, and their picture.

`explain` decodes a video through the one road (the Predictor's preprocessing), runs the bundle's fp32
torch model (model/gradcam.py says how the maps are made) and returns an `Explanation` of one clip: the
centre view (the middle spatial crop of the middle temporal view; the only view of a one-view recipe).
The label and score are those `classify` gives with the same views: softmax per view, averaged.
`render_explanation` draws it as one PNG: the frames with the heatmap over them, and the label.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field

import numpy as np
import torch

from ..model.gradcam import heatmaps
from ..video.transforms import denormalize

TILE = 160  # pixels a frame takes in the rendered picture
# A jet-like colour map: (position, RGB) anchors, cold blue to hot red.
COLORMAP = np.array(
    [
        (0.0, 0.0, 0.0, 0.5),
        (0.125, 0.0, 0.0, 1.0),
        (0.375, 0.0, 1.0, 1.0),
        (0.625, 1.0, 1.0, 0.0),
        (0.875, 1.0, 0.0, 0.0),
        (1.0, 0.5, 0.0, 0.0),
    ]
)
MAX_ALPHA = 0.6  # the heatmap's opacity where it is hottest; cold parts show the frame as it is


@dataclass
class Explanation:
    """Where the evidence for one class lies in each frame of a clip."""

    frames: np.ndarray  # uint8 [T, S, S, 3]: the clip's frames as the model saw them (resized, cropped)
    heatmaps: np.ndarray  # float32 [T, S, S] in [0, 1]: one map per frame, scaled by the clip's largest value
    label_index: int  # the class explained: the top-1 unless a target was given
    label: str
    score: float  # its softmax score, averaged over the views as classify averages
    frame_indices: list[int] = field(default_factory=list)  # the video frame each of the T frames is

    def heatmaps_uint8(self) -> np.ndarray:
        """The heatmaps as uint8 [T, S, S] (value x 255, rounded): a quarter of the bytes, for sending."""
        return np.round(self.heatmaps * 255).astype(np.uint8)

    def to_dict(self) -> dict:
        """JSON-ready: the label, score, frames and the heatmaps as base64 of uint8 [T, S, S], row-major."""
        maps = self.heatmaps_uint8()
        return {
            "label": self.label,
            "index": self.label_index,
            "score": self.score,
            "frames": list(self.frame_indices),
            "heatmaps": {
                "shape": list(maps.shape),
                "dtype": "uint8",
                "scale": 1 / 255,
                "data": base64.b64encode(maps.tobytes()).decode("ascii"),
            },
        }


def centre_view(spatial_views: int, temporal_views: int) -> tuple[int, int]:
    """(index among the views as EvalViews lays them out, temporal view) of the centre view: the middle
    spatial crop of the middle temporal view (each spatial crop's temporal views are together)."""
    temporal = temporal_views // 2
    return (spatial_views // 2) * temporal_views + temporal, temporal


def explain(predictor, video, target: int | None = None, views: int | None = None) -> Explanation:
    """The Explanation of `video` (a path or bytes) for class `target` (default: the top-1), on
    `predictor`'s bundle and preprocessing; `views` as in classify."""
    check_target(target, len(predictor.labels))  # before the decode
    return explain_views(predictor, predictor.preprocess(video, views), target, views)


def explain_views(predictor, ev, target: int | None = None, views: int | None = None) -> Explanation:
    """The Explanation of a video already decoded into EvalViews `ev` with `predictor.preprocess(video,
    views)` (e.g. in a decode worker, as the service decodes)."""
    check_target(target, len(predictor.labels))
    pre = predictor.preprocessing.with_views(views)
    if len(ev.clips) != pre.views:
        raise ValueError(f"{len(ev.clips)} clips for views={views}, which makes {pre.views}")
    model = predictor.torch_model()
    device = next(model.parameters()).device
    maps = heatmaps(model, ev.clips.to(device), target)
    view, temporal = centre_view(pre.spatial_views, pre.temporal_views)
    scores = torch.softmax(maps.logits.double(), dim=-1).mean(0)  # [C], as classify ranks
    return Explanation(
        frames=denormalize(ev.clips[view], pre.mean, pre.std),
        heatmaps=maps.maps[view].float().cpu().numpy(),
        label_index=maps.target,
        label=predictor.labels[maps.target],
        score=float(scores[maps.target]),
        frame_indices=list(ev.frame_indices[temporal]),
    )


def check_target(target, num_classes: int) -> None:
    valid = not isinstance(target, bool) and isinstance(target, int) and 0 <= target < num_classes
    if target is not None and not valid:
        raise ValueError(f"target must be a class index between 0 and {num_classes - 1}, got {target!r}")


# ----------------------------------------------------------------------------- the picture


def colorize(heat: np.ndarray) -> np.ndarray:
    """Heat [..., H, W] in [0, 1] -> float RGB [..., H, W, 3] in [0, 1] through COLORMAP."""
    heat = np.clip(heat, 0, 1)
    return np.stack([np.interp(heat, COLORMAP[:, 0], COLORMAP[:, c]) for c in (1, 2, 3)], axis=-1)


def overlay(frame: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """uint8 frame [H, W, 3] with its heat [H, W] drawn over it, opaque where hot -> uint8 [H, W, 3]."""
    alpha = MAX_ALPHA * np.clip(heat, 0, 1)[..., None]
    mixed = frame.astype(np.float32) * (1 - alpha) + 255 * colorize(heat) * alpha
    return np.round(mixed).clip(0, 255).astype(np.uint8)


def render_explanation(explanation: Explanation, tile: int = TILE, columns: int = 8) -> bytes:
    """One PNG: the label and score on top, then each frame (scaled to `tile` pixels) with its heatmap over
    it and its frame number, `columns` to a row."""
    from PIL import Image, ImageDraw

    frames, maps = explanation.frames, explanation.heatmaps
    count = len(frames)
    columns = max(1, min(columns, count))
    rows = -(-count // columns)
    gap, title_h, caption_h = 4, 28, 18
    width = columns * tile + (columns + 1) * gap
    height = title_h + rows * (tile + caption_h + gap) + gap
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    title = f"{explanation.label}  {explanation.score:.1%}   (heatmap: where the evidence for it is)"
    draw.text((gap + 2, 6), title, fill="black", font=font(16))
    for i in range(count):
        frame = Image.fromarray(frames[i]).resize((tile, tile), Image.BILINEAR)
        heat = Image.fromarray(maps[i].astype(np.float32), mode="F").resize((tile, tile), Image.BILINEAR)
        picture = Image.fromarray(overlay(np.asarray(frame), np.asarray(heat)))
        x = gap + (i % columns) * (tile + gap)
        y = title_h + (i // columns) * (tile + caption_h + gap)
        canvas.paste(picture, (x, y))
        index = explanation.frame_indices[i] if i < len(explanation.frame_indices) else i
        draw.text((x + 2, y + tile + 2), f"frame {index}", fill="black", font=font(12))
    out = io.BytesIO()
    canvas.save(out, format="PNG", optimize=True)
    return out.getvalue()


def font(size: int):
    """PIL's built-in font at `size` (Pillow 10.1+), else its fixed bitmap font."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow 10.0
        return ImageFont.load_default()
