"""The engine interface: a Runner turns clips into logits, and nothing else.

A runner knows its backend name, the devices and precisions it offers, whether it can run a bundle
here (`available`), and the largest batch its artifact takes. Video, labels and top-k live in the
Predictor (predictor.py), once, over every runner. Runners are registered in runners/__init__.py.

Backend names are "BACKEND" or "BACKEND-DEVICE" (e.g. "onnxruntime-cuda"); `parse_backend` is the
only place that reads them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .bundle import Bundle


@dataclass
class Outputs:
    """What one model call gives: the logits, and the pooled features the head read where the artifact
    has them (bundles exported before embeddings hold ONNX files and engines without that output)."""

    logits: np.ndarray  # [n, C] float32
    features: np.ndarray | None = None  # [n, D] float32: after ln_post, before the head's fc


class Runner:
    """One loaded model artifact. Subclasses set the class attributes and implement `outputs`."""

    name: str = ""  # backend name, e.g. "onnxruntime"
    devices: tuple[str, ...] = ("cpu",)
    precisions: tuple[str, ...] = ("fp32",)

    device: str = "cpu"
    precision: str = "fp32"
    max_batch: int | None = None  # None: any batch size
    has_features: bool = True  # False where the artifact has no features output (older bundles)

    @classmethod
    def available(cls, bundle: Bundle, device: str) -> str | None:
        """None when this runner can run `bundle` on `device` here, else why not, in words."""
        raise NotImplementedError

    @classmethod
    def precision_refusal(cls, bundle: Bundle, device: str, precision: str) -> str | None:
        """None when this runner can run `bundle` in `precision` on `device` here with the figures its export
        gate measured, else why not and what to do instead (one line). `available` has passed."""
        return None

    @classmethod
    def default_precision(cls, bundle: Bundle, device: str) -> tuple[str, str]:
        """(precision, why) when none is asked for."""
        return "fp32", "the default"

    def outputs(self, clips: np.ndarray) -> Outputs:
        """float32 clips [n, 3, T, S, S] (n <= max_batch) -> float32 logits [n, C] and, where the artifact
        has them, features [n, D], from one model call."""
        raise NotImplementedError

    def run(self, clips: np.ndarray) -> np.ndarray:
        """float32 clips [n, 3, T, S, S] (n <= max_batch) -> float32 logits [n, C]."""
        return self.outputs(clips).logits

    @property
    def label(self) -> str:
        """e.g. "onnxruntime-cpu": what the service and the demo report as the backend."""
        return f"{self.name}-{self.device}" if len(self.devices) > 1 else self.name


def parse_backend(name: str, known: dict[str, type[Runner]]) -> tuple[str, str | None]:
    """ "onnxruntime-cuda" -> ("onnxruntime", "cuda"); "torch" -> ("torch", None). Unknown names raise."""
    if not isinstance(name, str):
        raise ValueError(f"backend must be a string, got {name!r}")
    base, _, device = name.partition("-")
    if base not in known:
        raise ValueError(f"unknown backend {name!r}; choose auto or one of {', '.join(known)} (optionally -DEVICE)")
    devices = known[base].devices
    if device and device not in devices:
        raise ValueError(f"unknown device {device!r} for {base}; choose one of {', '.join(devices)}")
    return base, device or None


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
