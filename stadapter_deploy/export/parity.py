"""The parity gate: every exported artifact against the fp32 PyTorch model.

Check inputs are real decoded clips (generated motion videos through the one preprocessing path,
with the bundle's own preprocessing) plus random clips. Gates:
- fp32 artifacts: max |logit diff| <= 1e-4 x the largest |logit|;
- half-precision artifacts: the same top-1 on every real clip, and logit cosine >= 0.999 on all.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..preprocessing import Preprocessing

FP32_REL_TOL = 1e-4
HALF_MIN_COSINE = 0.999
# int8 rounds every weight GEMM's input: logits move (relative error 0.2-0.3% on random B/16 clips, up to
# 15-24% with a minimum cosine of 0.976 on a deliberately fragile one-clip-per-class head); the decoded
# clips' top-1 must not.
INT8_MIN_COSINE = 0.97
MIN_COSINE = {"fp16": HALF_MIN_COSINE, "int8": INT8_MIN_COSINE}


@dataclass
class CheckInputs:
    clips: np.ndarray  # [N, 3, T, S, S] real decoded clips
    random: np.ndarray  # [M, 3, T, S, S] standard normal


def check_inputs(pre: Preprocessing, num_videos: int = 3, num_random: int = 2, seed: int = 0) -> CheckInputs:
    """Decode `num_videos` generated motion videos (one view each) and draw `num_random` random clips."""
    from ..video import prepare_eval_views
    from ..video.synthetic import write_motion_video

    one_view = pre.replace(spatial_views=1, temporal_views=1)
    clips = []
    with tempfile.TemporaryDirectory(prefix="stadapter-parity-") as tmp:
        for i in range(num_videos):
            video = write_motion_video(Path(tmp) / f"check_{i}.mp4", label=i % 6, seed=seed + i)
            clips.append(prepare_eval_views(video, one_view).clips.numpy())  # [1, 3, T, S, S]
    gen = torch.Generator().manual_seed(seed)
    shape = (num_random, *pre.clip_shape)
    random = torch.randn(shape, generator=gen).numpy()
    empty = np.zeros((0, *shape[1:]), np.float32)
    return CheckInputs(clips=np.concatenate(clips) if clips else empty, random=random)


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """Figures of `candidate` logits against `reference` logits, both [N, C]."""
    ref, got = reference.astype(np.float64), candidate.astype(np.float64)
    if ref.shape != got.shape:
        raise ValueError(f"logit shapes differ: reference {ref.shape}, candidate {got.shape}")
    if len(ref) == 0:
        return {"n": 0}
    cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1) + 1e-30)
    max_diff, max_logit = float(np.abs(ref - got).max()), float(np.abs(ref).max())
    return {
        "n": len(ref),
        "max_abs_diff": max_diff,
        "max_abs_logit": max_logit,
        "rel_diff": max_diff / max(max_logit, 1e-30),
        "min_cosine": float(cos.min()),
        "top1_agreement": float((ref.argmax(1) == got.argmax(1)).mean()),
    }


def gate(figures: dict, precision: str) -> list[str]:
    """Reasons the figures fail the gate for `precision` ([] = pass)."""
    failures = []
    for part in ("clips", "random"):
        f = figures[part]
        if f["n"] == 0:
            continue
        if precision == "fp32":
            if f["rel_diff"] > FP32_REL_TOL:
                failures.append(
                    f"{part}: max |logit diff| {f['max_abs_diff']:.3g} > "
                    f"{FP32_REL_TOL:g} x max |logit| {f['max_abs_logit']:.3g}"
                )
        else:
            if f["min_cosine"] < MIN_COSINE[precision]:
                failures.append(f"{part}: logit cosine {f['min_cosine']:.6f} < {MIN_COSINE[precision]}")
            if part == "clips" and f["top1_agreement"] < 1.0:
                failures.append(f"{part}: top-1 agrees on only {f['top1_agreement']:.0%} of the check clips")
    return failures


def reference_logits(model: torch.nn.Module, inputs: CheckInputs, batch: int = 4) -> dict[str, np.ndarray]:
    """fp32 torch logits of the check inputs on the CPU."""
    model = model.float().eval().cpu()
    out = {}
    with torch.inference_mode():
        for part in ("clips", "random"):
            x = torch.from_numpy(getattr(inputs, part))
            chunks = [model(x[i : i + batch]).numpy() for i in range(0, len(x), batch)]
            out[part] = np.concatenate(chunks) if chunks else np.zeros((0, model.cfg.num_classes), np.float32)
    return out


def check_artifact(
    run: Callable[[np.ndarray], np.ndarray], reference: dict[str, np.ndarray], inputs: CheckInputs, precision: str
) -> dict:
    """Run the artifact on the check inputs; {"clips": figures, "random": figures, "passed", "failures"}."""
    figures = {part: compare(reference[part], run(getattr(inputs, part))) for part in ("clips", "random")}
    failures = gate(figures, precision)
    return {**figures, "precision": precision, "passed": not failures, "failures": failures}
