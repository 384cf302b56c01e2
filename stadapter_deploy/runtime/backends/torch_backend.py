"""PyTorch backend: the bundle's safetensors weights in eager mode, on CPU (fp32) or CUDA (fp16 by default)."""

from __future__ import annotations

import numpy as np
import torch

from ...errors import BundleError, WeightsError
from ...model import build_model
from ..bundle import Bundle
from ..predictor import Predictor


class TorchPredictor(Predictor):
    def __init__(self, bundle: Bundle, device: str | None = None, precision: str | None = None):
        super().__init__(bundle, max_batch=None)
        if not bundle.find("torch"):
            raise BundleError(f"{bundle.path} holds no torch weights")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("backend torch-cuda asked for, but torch sees no CUDA GPU")
        precision = precision or ("fp16" if device == "cuda" else "fp32")
        try:
            model = build_model(checkpoint=bundle.path)
        except WeightsError as e:
            raise BundleError(f"cannot load the torch weights of {bundle.path}: {e}") from e
        self.model = model.eval().to(device)
        if precision == "fp16":
            self.model.half()  # LayerNorm still computes in fp32 (model/vit.py)
        self.device = torch.device(device)
        self.precision = precision
        self.backend = f"torch-{device}"

    @torch.inference_mode()
    def _infer(self, clips: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(clips).to(self.device)
        return self.model(x).float().cpu().numpy()
