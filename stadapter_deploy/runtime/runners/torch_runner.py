"""PyTorch: the bundle's safetensors weights in eager mode, on CPU (fp32, or bf16 where the CPU has it)
or CUDA (fp16 by default)."""

from __future__ import annotations

import numpy as np
import torch

from ... import hardware
from ...errors import BundleError, WeightsError
from ...model import STAdapterViT
from ...model.weights import load_safetensors
from ..bundle import Bundle
from ..runner import Outputs, Runner, cuda_available


class TorchRunner(Runner):
    name = "torch"
    devices = ("cpu", "cuda")
    precisions = ("fp32", "fp16", "bf16")

    @classmethod
    def available(cls, bundle: Bundle, device: str) -> str | None:
        if not bundle.find("torch"):
            return "the bundle holds no torch artifact"
        if device == "cuda" and not cuda_available():
            return "no CUDA GPU"
        return None

    @classmethod
    def precision_refusal(cls, bundle: Bundle, device: str, precision: str) -> str | None:
        if precision == "fp16" and device != "cuda":
            return "fp16 on the torch backend needs CUDA; use fp32 or bf16 on the CPU"
        if precision == "bf16" and device == "cpu" and not hardware.cpu_has_bf16():
            return "bf16 on the CPU needs AVX512-BF16 or AMX, which this CPU lacks; use fp32"
        return None

    @classmethod
    def default_precision(cls, bundle: Bundle, device: str) -> tuple[str, str]:
        return ("fp16", "half precision on the GPU") if device == "cuda" else ("fp32", "the CPU default")

    def __init__(self, bundle: Bundle, device: str = "cpu", precision: str = "fp32", threads: int | None = None):
        if device == "cuda" and not cuda_available():
            raise ValueError("backend torch-cuda asked for, but torch sees no CUDA GPU")
        if reason := self.precision_refusal(bundle, device, precision):
            raise ValueError(reason)
        if threads:
            torch.set_num_threads(threads)
        self.model = load_torch_model(bundle).to(device)
        if precision == "fp16":
            self.model.half()  # LayerNorm still computes in fp32 (model/vit.py)
        self.device, self.precision = device, precision

    @torch.inference_mode()
    def outputs(self, clips: np.ndarray) -> Outputs:
        x = torch.from_numpy(clips).to(self.device)
        with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            features = self.model.features(x)  # [n, D]
            logits = self.model.head(features)  # [n, C]
        return Outputs(logits.float().cpu().numpy(), features.float().cpu().numpy())


def load_torch_model(bundle: Bundle) -> STAdapterViT:
    """The bundle's fp32 model from its torch artifact (model.safetensors), on the CPU, in eval mode."""
    found = bundle.find("torch")
    if not found:
        raise BundleError(f"{bundle.path} holds no torch artifact (model.safetensors); export it again")
    try:  # the artifact file the manifest names, with the manifest's architecture
        model = STAdapterViT(bundle.config)
        model.load_state_dict(load_safetensors(bundle.file(found[0])), strict=True)
    except (WeightsError, RuntimeError) as e:
        raise BundleError(f"cannot load the torch weights of {bundle.path}: {str(e).splitlines()[0]}") from e
    return model.eval()
