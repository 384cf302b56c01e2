"""stadapter-deploy: ST-Adapter video action recognition from training to production.

Heavy optional backends (onnxruntime, tensorrt) are imported lazily, only when asked for.
"""

from .errors import BundleError, ConfigError, STAdapterError, VideoError, WeightsError
from .model import ModelConfig, build_model

__version__ = "0.1.0"


def load_predictor(bundle, backend: str = "auto", **kwargs):
    """Load a model bundle and return a Predictor for the chosen backend (see runtime/)."""
    from .runtime import load_predictor as _load

    return _load(bundle, backend=backend, **kwargs)


__all__ = [
    "BundleError",
    "ConfigError",
    "ModelConfig",
    "STAdapterError",
    "VideoError",
    "WeightsError",
    "build_model",
    "load_predictor",
]
