"""The package's exception types: one per kind of user-facing failure, each with a stable `code`."""


class STAdapterError(Exception):
    """Base class for every error this package raises on bad input."""

    code = "error"


class WeightsError(STAdapterError, ValueError):
    """A weight file is missing, corrupt, or does not fit the model."""

    code = "bad_weights"


class VideoError(STAdapterError, ValueError):
    """A video cannot be decoded into the frames a clip needs."""

    code = "video_unreadable"


class BundleError(STAdapterError, ValueError):
    """A model bundle is missing, incomplete, or fails its checksums."""

    code = "bad_bundle"


class ConfigError(STAdapterError, ValueError):
    """A configuration value is unset, missing on disk, or out of range."""

    code = "bad_config"


class RequestError(STAdapterError):
    """A request that a service refused or could not answer: an HTTP status, a stable code (what a client
    switches on) and a message in words. 4xx: the request is at fault; 503: the server cannot answer right
    now, retry; 500: it is broken."""

    def __init__(self, status: int, message: str, code: str = "error"):
        super().__init__(message)
        self.status, self.code = status, code
