"""stadapter-deploy: ST-Adapter video action recognition from training to production.

Heavy optional backends (onnxruntime, tensorrt) are imported lazily, only when asked for, and so is
torch: `build_model` and `ModelConfig` load on first use, so that a light module of the package (the
decode pool, the errors) can be imported without it.
"""

from .errors import BundleError, ConfigError, STAdapterError, VideoError, WeightsError


def __getattr__(name: str):
    if name in ("ModelConfig", "build_model"):
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
