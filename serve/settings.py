"""The service's configuration: environment variables, read once (stadapter_deploy/settings.py), checked,
with defaults that work.

Each setting is one field of `Settings`: its default, its variable, its lowest value and its meaning are
stated there and nowhere else; the decode limits are the library's own settings type, held here (the
README's table is `settings_table()`, checked by a test).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from stadapter_deploy.errors import ConfigError
from stadapter_deploy.hardware import memory_bytes, nvidia_gpu_count
from stadapter_deploy.settings import nested, read_settings, setting
from stadapter_deploy.settings import settings_table as table_of
from stadapter_deploy.video.limits import DecodeLimits

ROOT = Path(__file__).resolve().parent.parent
READY_PROBE_S = 0.8  # /readyz asks the model for at most this long
READY_FRESH_S = 1.0  # a batch this recent proves the model is up without asking (keeps /readyz cheap under load)
# Where a bundle is looked for when STADAPTER_BUNDLE is unset: the one a built bento carries, then
# the one ./quickstart.sh writes.
DEFAULT_BUNDLES = (ROOT / "bundle", ROOT / "runs" / "quickstart" / "bundle")
DEFAULT_DECODE_WORKERS = 2
MEMORY_SHARE = 0.5  # decode workers x their bound fit in this share of the machine's memory


@dataclass(frozen=True)
class Settings:
    bundle: Path = setting(
        None,
        "STADAPTER_BUNDLE",
        "the model bundle directory (stadapter-export --out ...)",
        shown="`bundle/`, else `runs/quickstart/bundle`",
    )
    backend: str = setting(
        "auto",
        "STADAPTER_BACKEND",
        "`auto`, `torch`, `onnxruntime`, `tensorrt`, optionally `-cpu`/`-cuda` (see Export)",
    )
    precision: str | None = setting(
        None,
        "STADAPTER_PRECISION",
        "`fp32`, `fp16` (GPU), `bf16` (torch on a CPU with BF16), `int8` (a bundle exported with `--int8`); "
        "unset: the backend's choice (see Export)",
    )
    api_token: str | None = setting(
        None,
        "STADAPTER_API_TOKEN",
        "set: every route but `/readyz`, `/livez`, `/healthz` and `/metrics` needs `Authorization: Bearer "
        "<token>` (else a JSON 401); `/ui` asks for it as its login password",
        secret=True,
    )
    max_upload_mb: float = setting(
        200.0,
        "STADAPTER_MAX_UPLOAD_MB",
        "larger request bodies, on every route (the page's uploads included), are refused with 413 (a declared "
        "`Content-Length` over it before a byte is read)",
        0.001,
    )
    body_timeout_s: float = setting(
        60.0,
        "STADAPTER_BODY_TIMEOUT_S",
        "a request body not fully received by then gets 408, on every route, so a slow client cannot hold a worker",
        0.01,
    )
    decode_timeout_s: float = setting(
        30.0,
        "STADAPTER_DECODE_TIMEOUT_S",
        "a request's decode that runs longer is stopped (its process is killed and replaced) and answered 422",
        0.01,
    )
    decode_workers: int | None = setting(
        None,
        "STADAPTER_DECODE_WORKERS",
        f"decode processes per API worker, for the requests; unset: {DEFAULT_DECODE_WORKERS}, fewer where that "
        "many decodes at the largest frames allowed would not fit in half the machine's memory",
        1,
        shown="(auto)",
    )
    api_workers: int = setting(1, "STADAPTER_API_WORKERS", "API worker processes (uploads, checks, decode pools)", 1)
    model_workers: int | None = setting(
        None,
        "STADAPTER_MODEL_WORKERS",
        "model worker processes: on GPUs worker i runs on GPU i; on a CPU they split the cores; unset: one per "
        "visible NVIDIA GPU where the model runs on CUDA, else 1",
        1,
        shown="(auto)",
    )
    max_batch_size: int = setting(16, "STADAPTER_MAX_BATCH_SIZE", "most clips in one model call", 1)
    max_latency_ms: int = setting(
        30000,
        "STADAPTER_MAX_LATENCY_MS",
        "longest a clip may wait for the model; past it the request gets 503 (overload)",
        1,
    )
    max_videos: int = setting(16, "STADAPTER_MAX_VIDEOS", "most videos in one `/classify_batch` request", 1)
    max_timeline_windows: int = setting(
        64,
        "STADAPTER_MAX_TIMELINE_WINDOWS",
        "most windows in one `/classify_timeline` answer; longer videos go through `/timeline_task`",
        1,
    )
    max_task_seconds: float = setting(
        3 * 3600.0,
        "STADAPTER_MAX_TASK_SECONDS",
        "longest video a `/timeline_task` takes, in seconds (decoding is bounded in memory at any length)",
        1,
    )
    max_tasks: int = setting(
        8,
        "STADAPTER_MAX_TASKS",
        "most `/timeline_task` tasks pending or running at once, over all API workers; past it a submit gets 429 "
        "with `Retry-After`",
        1,
    )
    task_ttl_s: float = setting(
        3600.0,
        "STADAPTER_TASK_TTL_S",
        "how long a finished task's result is kept (its upload is deleted as soon as it ends)",
        1,
    )
    task_workers: int = setting(
        1,
        "STADAPTER_TASK_WORKERS",
        "decode processes for `/timeline_task`, apart from the requests' pool, so a task never takes theirs",
        1,
    )
    request_timeout_s: float = setting(
        300.0, "STADAPTER_REQUEST_TIMEOUT_S", "BentoML's per-request timeout of both services", 1
    )
    warmup: bool = setting(
        True,
        "STADAPTER_WARMUP",
        "run one batch of `STADAPTER_MAX_BATCH_SIZE` clips at startup, so memory peaks before `/readyz` "
        "says ready (`0`: skip)",
    )
    ui: bool = setting(
        False,
        "STADAPTER_UI",
        "`1`: mount the Gradio demo at `/ui`; it calls this service in-process (needs gradio and `demo/`, "
        "so not in a bento)",
    )
    decode: DecodeLimits = nested(DecodeLimits)

    def model_processes(self, on_gpu: bool) -> int:
        """STADAPTER_MODEL_WORKERS, else one per visible GPU for a CUDA model, else 1."""
        return self.model_workers or (max(1, nvidia_gpu_count()) if on_gpu else 1)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def decode_processes(self, frames_held: int, size: int) -> int:
        """STADAPTER_DECODE_WORKERS, else the default where that many bounded decodes fit in half the memory."""
        if self.decode_workers:
            return self.decode_workers
        bound = self.decode.decode_bound_bytes(frames_held, size)
        return max(1, min(DEFAULT_DECODE_WORKERS, int(memory_bytes() * MEMORY_SHARE // bound)))


def find_bundle(raw: str | os.PathLike | None = None) -> Path:
    """STADAPTER_BUNDLE, else the first default bundle that exists; ConfigError saying what to do if none."""
    if raw:
        return Path(raw).expanduser().resolve()
    for candidate in DEFAULT_BUNDLES:
        if (candidate / "manifest.json").is_file():
            return candidate
    raise ConfigError(
        "no model bundle: set STADAPTER_BUNDLE to a bundle directory (make one with stadapter-export), "
        "or run ./quickstart.sh to make runs/quickstart/bundle"
    )


def load_settings(environ=os.environ) -> Settings:
    """Read and check every variable; ConfigError (one line) on the first bad one. Unset or empty: the default."""
    settings = read_settings(Settings, environ)
    return dataclasses.replace(settings, bundle=find_bundle(settings.bundle))


def settings_table() -> str:
    """The README's table of variables, from the fields themselves."""
    return table_of(Settings)
