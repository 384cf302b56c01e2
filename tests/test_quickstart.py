"""The quickstart's steps, in the shortened form CI runs: small dataset, 1 epoch, then the demo it starts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "quickstart.sh"


def quickstart_env() -> dict:
    # The suite's own environment is the venv the quickstart would create: step 1 finds it installed.
    return {**os.environ, "QUICKSTART_VENV": sys.prefix, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("quickstart")
    args = ["--fast", "--dir", str(work / "run"), "--data", str(work / "data")]
    proc = subprocess.run(
        [str(SCRIPT), "--no-serve", *args],
        cwd=ROOT,
        env=quickstart_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work, args, proc.stdout


def test_quickstart_runs_every_step_and_writes_a_bundle(quickstart_run):
    from stadapter_deploy import load_predictor

    work, _, out = quickstart_run
    assert [int(n) for n in re.findall(r"==> \[(\d)/5\]", out)] == [1, 2, 3, 4, 5]
    assert (work / "data" / "train.txt").read_text().count("\n") == 48
    assert (work / "run" / "log.jsonl").exists()
    predictor = load_predictor(work / "run" / "bundle")
    import torch

    cuda = torch.cuda.is_available()  # auto takes the GPU where there is one
    assert predictor.backend in (("onnxruntime-cuda", "torch-cuda") if cuda else ("onnxruntime-cpu",))
    assert predictor.labels == ["moving left", "moving right", "moving up", "moving down", "approaching", "receding"]
    result = predictor.classify(ROOT / "demo" / "examples" / "moving_left.mp4")
    assert len(result.labels) == 5
    assert "python -m demo --bundle" in out


def test_quickstart_skips_finished_steps_and_starts_the_demo(quickstart_run):
    import httpx
    from helpers import stop_process as stop

    from stadapter_deploy.net import free_port

    work, args, _ = quickstart_run
    port = free_port()
    proc = subprocess.Popen(
        [str(SCRIPT), *args, "--port", str(port)],
        cwd=ROOT,
        env=quickstart_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Demo running at" in line:
                break
        out = "".join(lines)
        assert f"Demo running at http://127.0.0.1:{port}/" in out, out
        assert out.count("skipped:") == 4  # environment, data, training, export were all done already
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 200
    finally:
        stop(proc)


def test_quickstart_rejects_bad_options(tmp_path):
    proc = subprocess.run(
        [str(SCRIPT), "--clip", str(tmp_path / "missing.pt")], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 2 and "no such file" in proc.stderr
    proc = subprocess.run([str(SCRIPT), "--frobnicate"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown option" in proc.stderr
