"""The parity gate: every exported artifact against the fp32 PyTorch model.

Check inputs are real decoded clips (generated motion videos through the one preprocessing path,
with the bundle's own preprocessing) plus random clips. Gates:
- fp32 artifacts: max |logit diff| <= 1e-4 x the largest |logit|;
- half-precision artifacts: the same top-1 on every real clip, and logit cosine >= 0.999 on all;
- int8 artifacts: the same top-1 on every real clip, and logit cosine >= 0.97 on all.
The pooled features (the `features` output, what embeddings are made of) are gated from the same model
call: fp32 max |feature diff| <= 1e-4 x the largest |feature|; fp16 and int8 by their cosine to the fp32
features, clip by clip (>= 0.999 and >= 0.99: an embedding is used through cosines to others).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..preprocessing import Preprocessing
from ..runtime.runner import Outputs

FP32_REL_TOL = 1e-4
HALF_MIN_COSINE = 0.999
# int8 rounds every weight GEMM's input: logits move (relative error 0.2-0.3% on random B/16 clips, up to
# 15-24% with a minimum cosine of 0.976 on a deliberately fragile one-clip-per-class head); the decoded
# clips' top-1 must not.
INT8_MIN_COSINE = 0.97
MIN_COSINE = {"fp16": HALF_MIN_COSINE, "int8": INT8_MIN_COSINE}
# Features (ln_post's output, before the head) against fp32, minimum cosine over the check clips: measured
# fp16 0.9999998 and int8 0.99990 on B/16 12x384 (random weights), int8 0.99986 on the trained synthetic
# model (max |diff| 1.4% and 1.3% of the largest feature). The head is not in the way, so int8 gets a
# tighter bound than its logits (whose 0.97 allows for a fragile head): 0.99 leaves 70x the measured error.
FEATURE_MIN_COSINE = {"fp16": 0.999, "int8": 0.99}
PARTS = ("clips", "random")


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
        raise ValueError(f"output shapes differ: reference {ref.shape}, candidate {got.shape}")
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


def compare_features(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """Figures of `candidate` features against `reference` features, both [N, D]."""
    figures = compare(reference, candidate)
    if figures["n"] == 0:
        return figures
    figures["max_abs_feature"] = figures.pop("max_abs_logit")
    del figures["top1_agreement"]  # no classes here
    return figures


def gate(figures: dict, precision: str) -> list[str]:
    """Reasons the figures fail the gate for `precision` ([] = pass)."""
    failures = []
    for part in PARTS:
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
    return failures + gate_features(figures.get("features"), precision)


def gate_features(figures: dict | None, precision: str) -> list[str]:
    """Reasons the features' figures fail the gate ([] = pass; None: nothing to check)."""
    if figures is None:
        return []
    if "missing" in figures:
        return [f"features: {figures['missing']}"]
    failures = []
    for part in PARTS:
        f = figures[part]
        if f["n"] == 0:
            continue
        if precision == "fp32" and f["rel_diff"] > FP32_REL_TOL:
            failures.append(
                f"{part}: max |feature diff| {f['max_abs_diff']:.3g} > "
                f"{FP32_REL_TOL:g} x max |feature| {f['max_abs_feature']:.3g}"
            )
        if precision != "fp32" and f["min_cosine"] < FEATURE_MIN_COSINE[precision]:
            failures.append(f"{part}: feature cosine {f['min_cosine']:.6f} < {FEATURE_MIN_COSINE[precision]}")
    return failures


def reference_outputs(model: torch.nn.Module, inputs: CheckInputs, batch: int = 4) -> dict[str, Outputs]:
    """fp32 torch logits and features of the check inputs on the CPU."""
    model = model.float().eval().cpu()
    out = {}
    with torch.inference_mode():
        for part in PARTS:
            x = torch.from_numpy(getattr(inputs, part))
            features = [model.features(x[i : i + batch]) for i in range(0, len(x), batch)]
            features = torch.cat(features) if features else torch.zeros((0, model.cfg.width))
            out[part] = Outputs(model.head(features).numpy(), features.numpy())
    return out


def check_artifact(
    run: Callable[[np.ndarray], np.ndarray | Outputs],
    reference: dict[str, np.ndarray | Outputs],
    inputs: CheckInputs,
    precision: str,
) -> dict:
    """Run the artifact on the check inputs; {"clips": figures, "random": figures, "passed", "failures"},
    and "features": {"clips", "random"} where the reference has features (an artifact without them fails).
    `run` gives logits, or Outputs with the features of the same call."""
    got = {part: as_outputs(run(getattr(inputs, part))) for part in PARTS}
    want = {part: as_outputs(reference[part]) for part in PARTS}
    figures = {part: compare(want[part].logits, got[part].logits) for part in PARTS}
    if all(want[part].features is not None for part in PARTS):
        if any(got[part].features is None for part in PARTS):
            figures["features"] = {"missing": "the artifact has no features output"}
        else:
            figures["features"] = {part: compare_features(want[part].features, got[part].features) for part in PARTS}
    failures = gate(figures, precision)
    return {**figures, "precision": precision, "passed": not failures, "failures": failures}


def as_outputs(value: np.ndarray | Outputs) -> Outputs:
    return value if isinstance(value, Outputs) else Outputs(np.asarray(value), None)
