"""The service's configuration: environment variables, read once, checked, with defaults that work.

| variable                        | default                   | meaning                                              |
|---------------------------------|---------------------------|------------------------------------------------------|
| STADAPTER_BUNDLE                | ./bundle, else quickstart | model bundle directory (stadapter-export --out ...)  |
| STADAPTER_BACKEND               | auto                      | auto, torch, onnxruntime, tensorrt (+ -cpu / -cuda)  |
| STADAPTER_PRECISION             | (the backend's choice)    | fp32, fp16, bf16 or int8 (see load_predictor)        |
| STADAPTER_MAX_UPLOAD_MB         | 200                       | larger request bodies get 413                        |
| STADAPTER_BODY_TIMEOUT_S        | 60                        | an upload not fully received by then gets 408        |
| STADAPTER_DECODE_TIMEOUT_S      | 30                        | a decode past this is stopped (its process killed)   |
| STADAPTER_DECODE_WORKERS        | 2                         | decode processes per API worker                      |
| STADAPTER_API_WORKERS           | 1                         | API (upload + decode) worker processes               |
| STADAPTER_MAX_BATCH_SIZE        | 16                        | most clips in one model call                         |
| STADAPTER_MAX_LATENCY_MS        | 30000                     | longest a clip may queue for the model before a 503  |
| STADAPTER_MAX_VIDEOS            | 16                        | most videos in one /classify_batch request           |
| STADAPTER_MAX_TIMELINE_WINDOWS  | 64                        | most windows in one /classify_timeline answer        |
| STADAPTER_REQUEST_TIMEOUT_S     | 300                       | whole-request limit of each service                  |
| STADAPTER_WARMUP                | 1                         | 1: run one full batch at startup (memory peaks then) |
| STADAPTER_UI                    | 0                         | 1: mount the Gradio demo at /ui (it calls this       |
|                                 |                           | service in-process; needs gradio and demo/)          |
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from stadapter_deploy.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
READY_PROBE_S = 0.8  # /readyz asks the model for at most this long
READY_FRESH_S = 1.0  # a batch this recent proves the model is up without asking (keeps /readyz cheap under load)
# Where a bundle is looked for when STADAPTER_BUNDLE is unset: the one a built bento carries, then
# the one ./quickstart.sh writes.
DEFAULT_BUNDLES = (ROOT / "bundle", ROOT / "runs" / "quickstart" / "bundle")


@dataclass(frozen=True)
class Settings:
    bundle: Path
    backend: str = "auto"
    precision: str | None = None  # None: the runner's default for this bundle and machine
    max_upload_mb: float = 200.0
    body_timeout_s: float = 60.0
    decode_timeout_s: float = 30.0
    decode_workers: int = 2
    api_workers: int = 1
    max_batch_size: int = 16
    max_latency_ms: int = 30000
    max_videos: int = 16
    max_timeline_windows: int = 64
    request_timeout_s: float = 300.0
    warmup: bool = True
    ui: bool = False

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def _number(name: str, default, kind: type, low: float):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a {'whole ' if kind is int else ''}number") from None
    if value < low:
        raise ConfigError(f"{name}={raw!r} must be at least {low}")
    return value


def _flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in ("0", "1", "true", "false", "yes", "no"):
        raise ConfigError(f"{name}={raw!r} must be 1 or 0")
    return raw in ("1", "true", "yes")


def find_bundle() -> Path:
    """STADAPTER_BUNDLE, else the first default bundle that exists; ConfigError saying what to do if none."""
    raw = os.environ.get("STADAPTER_BUNDLE", "").strip()
    if raw:
        return Path(raw).expanduser().resolve()
    for candidate in DEFAULT_BUNDLES:
        if (candidate / "manifest.json").is_file():
            return candidate
    raise ConfigError(
        "no model bundle: set STADAPTER_BUNDLE to a bundle directory (make one with stadapter-export), "
        "or run ./quickstart.sh to make runs/quickstart/bundle"
    )


def load_settings() -> Settings:
    """Read and check every variable; ConfigError (one line) on the first bad one."""
    return Settings(
        bundle=find_bundle(),
        backend=os.environ.get("STADAPTER_BACKEND", "").strip() or "auto",
        precision=os.environ.get("STADAPTER_PRECISION", "").strip() or None,
        max_upload_mb=_number("STADAPTER_MAX_UPLOAD_MB", 200.0, float, 0.001),
        body_timeout_s=_number("STADAPTER_BODY_TIMEOUT_S", 60.0, float, 0.01),
        decode_timeout_s=_number("STADAPTER_DECODE_TIMEOUT_S", 30.0, float, 0.01),
        decode_workers=_number("STADAPTER_DECODE_WORKERS", 2, int, 1),
        api_workers=_number("STADAPTER_API_WORKERS", 1, int, 1),
        max_batch_size=_number("STADAPTER_MAX_BATCH_SIZE", 16, int, 1),
        max_latency_ms=_number("STADAPTER_MAX_LATENCY_MS", 30000, int, 1),
        max_videos=_number("STADAPTER_MAX_VIDEOS", 16, int, 1),
        max_timeline_windows=_number("STADAPTER_MAX_TIMELINE_WINDOWS", 64, int, 1),
        request_timeout_s=_number("STADAPTER_REQUEST_TIMEOUT_S", 300.0, float, 1),
        warmup=_flag("STADAPTER_WARMUP", True),
        ui=_flag("STADAPTER_UI", False),
    )
