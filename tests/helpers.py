"""Helpers the test suite shares: a tiny model bundle made through the real export path."""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch


def synthetic_meta() -> dict:
    """What training writes beside a synthetic-recipe model: its dataset and its preprocessing."""
    from stadapter_deploy.recipes import get_recipe

    return {"dataset": "synthetic", "preprocessing": get_recipe("synthetic").preprocessing.to_dict()}


def make_tiny_checkpoint(folder: Path, seed: int = 0, synthetic: bool = True, **overrides) -> Path:
    """A tiny-preset model in our checkpoint format, with non-zero adapters so they matter."""
    from stadapter_deploy import build_model
    from stadapter_deploy.model import save_checkpoint

    torch.manual_seed(seed)
    model = build_model("tiny", **overrides)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".adapter_pre_" in name:
                p.normal_(std=0.05)
    extra = synthetic_meta() if synthetic else {}
    return save_checkpoint(model, folder, extra=extra)


def make_tiny_bundle(tmp_path: Path, name: str = "bundle", fp16: bool = False, verify: bool = True, **kw) -> Path:
    """Export a tiny synthetic-recipe model to `tmp_path/name` in-process (a few seconds on 2 cores).

    Holds model.safetensors (torch backend) and model.onnx (onnxruntime backend), labels = the 6 synthetic
    motion classes, preprocessing 8 frames at 32x32, 1 view.
    """
    from stadapter_deploy.export.exporter import ExportOptions, export_bundle, load_source

    ckpt = make_tiny_checkpoint(Path(tmp_path) / f"{name}-checkpoint", **kw)
    source = load_source(checkpoint=ckpt)
    options = ExportOptions(fp16=fp16, verify=verify, progress=False, check_videos=2, check_random=2)
    return export_bundle(source, Path(tmp_path) / name, options).path


SERVE_MAX_UPLOAD_MB = 1  # the test server's upload limit: small, so the 413 test sends little
SERVE_BODY_TIMEOUT_S = 4  # the test server's body timeout: short, so the stalled-body test waits little
SERVE_MAX_TASKS = 2


def stop_process(proc) -> None:
    """Terminate a subprocess.Popen, then kill it if it does not exit in 15 s."""
    import subprocess

    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=15)


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def rewrite_manifest(bundle: Path, change) -> None:
    """Apply change(manifest) to a bundle's manifest.json (the manifest itself is not checksummed)."""
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


@contextmanager
def running_server(root: Path, **env: str):
    """`bentoml serve` from the repository root with `env` added, on a free loopback port, with its own
    BENTOML_HOME and TMPDIR under `root`; yields (url, its Popen, its log), stopped by its process group."""
    from serve.local import ServerFailed, start_server, stop_server, wait_ready

    (root / "tmp").mkdir(parents=True, exist_ok=True)
    env = {"BENTOML_HOME": str(root / "bentoml"), "TMPDIR": str(root / "tmp"), **env}
    log = root / "server.log"
    process, url = start_server(env, log)
    try:
        try:
            wait_ready(process, url, log)
        except ServerFailed as e:
            pytest.fail(str(e))
        yield url, process, log
    finally:
        stop_server(process)


def serve_until_it_exits(env: dict, timeout_s: float = 120):
    """Run `bentoml serve` from the repository root with `env` added, for a setup it must refuse at start:
    the CompletedProcess (stderr as text)."""
    import os
    import subprocess
    import sys

    from serve.local import ROOT
    from stadapter_deploy.net import free_port

    return subprocess.run(
        [sys.executable, "-m", "bentoml", "serve", "--port", str(free_port())],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def wait_listening(port: int, process) -> None:
    """Wait for a LISTEN socket on the port without connecting (ffmpeg -listen 1 serves one client)."""
    import time

    hex_port = f":{port:04X} "
    for _ in range(400):
        table = Path("/proc/net/tcp").read_text()
        if any(hex_port in line and line.split()[3] == "0A" for line in table.splitlines()[1:]):
            return
        assert process.poll() is None, "ffmpeg exited before listening"
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


def untrimmed(model):
    """A copy of `model` that runs every token through the last block (the model computes the class token
    alone there: exact, and what these comparisons measure): a subclass, the core model untouched."""
    from stadapter_deploy.model.vit import STAdapterViT

    class UntrimmedViT(STAdapterViT):
        def features(self, x: torch.Tensor) -> torch.Tensor:
            self.check_input(x)
            num_frames = x.shape[2]
            tokens = self.embed(x.transpose(1, 2).flatten(0, 1))  # [B*T, L, D]
            tokens = self.transformer(tokens, num_frames, self.use_conv3d, trim_last_block=False)  # [B*T, L, D]
            return self.pool(tokens, num_frames)

    copy = UntrimmedViT(model.cfg)
    copy.load_state_dict(model.state_dict())
    copy.use_conv3d = model.use_conv3d
    return copy.train(model.training)
