"""Loopback servers the tests, the benchmarks and the page's screenshot start: a free port, and waiting
until one answers."""

from __future__ import annotations

import socket
import subprocess
import time


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port on 127.0.0.1 that nothing listens on now (TCP by default; socket.SOCK_DGRAM for UDP)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NotUp(RuntimeError):
    """The server exited, or did not answer in time; the message says which."""


def wait_until_up(url: str, process: subprocess.Popen, timeout_s: float = 120.0) -> None:
    """Until GET `url` answers 200; NotUp as soon as `process` exits, or after `timeout_s`."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise NotUp(f"it exited with code {process.returncode}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise NotUp(f"it did not answer at {url} within {timeout_s:g} s")
