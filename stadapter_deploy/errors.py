"""The package's exception types: one per kind of user-facing failure."""


class STAdapterError(Exception):
    """Base class for every error this package raises on bad input."""


class WeightsError(STAdapterError, ValueError):
    """A weight file is missing, corrupt, or does not fit the model."""


class VideoError(STAdapterError, ValueError):
    """A video cannot be decoded into the frames a clip needs."""


class BundleError(STAdapterError, ValueError):
    """A model bundle is missing, incomplete, or fails its checksums."""


class ConfigError(STAdapterError, ValueError):
    """A configuration value is unset, missing on disk, or out of range."""
