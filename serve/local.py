"""Run `bentoml serve` on this machine for tests and benchmarks: a free loopback port, a log file, a
readiness wait, and a stop by process group. One copy, used by tests/ and benchmarks/."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from stadapter_deploy.net import NotUp, free_port, wait_until_up

ROOT = Path(__file__).resolve().parent.parent


class ServerFailed(RuntimeError):
    """The server exited or did not become ready; the message ends with the tail of its log."""


def start_server(env: dict, log_path: Path, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """`bentoml serve` from the repository root on 127.0.0.1:port, in its own process group."""
    port = port or free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env={**os.environ, "BENTOML_DO_NOT_TRACK": "True", **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process, f"http://127.0.0.1:{port}"


def wait_ready(process: subprocess.Popen, url: str, log_path: Path, timeout_s: float = 180) -> None:
    try:
        wait_until_up(f"{url}/readyz", process, timeout_s)
    except NotUp as e:
        raise ServerFailed(f"bentoml serve is not ready: {e}:\n{log_path.read_text()[-3000:]}") from None


def stop_server(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group; then SIGKILL whatever of it and its workers is left."""
    import psutil

    try:
        family = psutil.Process(process.pid).children(recursive=True)  # workers run in their own groups
    except psutil.NoSuchProcess:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    except ProcessLookupError:
        pass
    _, alive = psutil.wait_procs(family, timeout=10)
    for child in alive:
        child.kill()
