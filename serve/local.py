"""Run `bentoml serve` on this machine for tests and benchmarks: a free loopback port, a log file, a
readiness wait, and a stop by process group. One copy, used by tests/ and benchmarks/."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from stadapter_deploy.net import free_port

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
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerFailed(f"bentoml serve exited ({process.returncode}):\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise ServerFailed(f"bentoml serve not ready after {timeout_s:g} s:\n{log_path.read_text()[-3000:]}")


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
