"""The quickstart in the shortened form CI runs (72 clips, 1 epoch), from a copy of the script in a folder of
its own, so its default folders are the ones a user gets; then what a second run skips and what it refuses,
a full run after a fast one, --clip, and every option's one-line refusal."""

from __future__ import annotations

import os
import re
import shutil
import signal
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


def quickstart(folder: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(folder / "quickstart.sh"), *args],
        cwd=folder,
        env=quickstart_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A folder holding the script, as a clone does: it works in the folder it lives in."""
    folder = tmp_path_factory.mktemp("clone")
    shutil.copy(SCRIPT, folder / "quickstart.sh")
    return folder


@pytest.fixture(scope="module")
def quickstart_run(clone):
    proc = quickstart(clone, "--fast", "--no-serve")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return clone / "runs" / "quickstart-fast", proc.stdout


def test_quickstart_runs_every_step_and_writes_a_bundle(quickstart_run):
    from stadapter_deploy import load_predictor

    run, out = quickstart_run
    assert [int(n) for n in re.findall(r"==> \[(\d)/5\]", out)] == [1, 2, 3, 4, 5]
    assert (run / "data" / "train.txt").read_text().count("\n") == 48  # --fast: 48 train, 24 val clips
    assert (run / "data" / "val.txt").read_text().count("\n") == 24
    assert (run / "log.jsonl").exists()
    predictor = load_predictor(run / "bundle")
    import torch

    cuda = torch.cuda.is_available()  # auto takes the GPU where there is one
    assert predictor.backend in (("onnxruntime-cuda", "torch-cuda") if cuda else ("onnxruntime-cpu",))
    assert predictor.labels == ["moving left", "moving right", "moving up", "moving down", "approaching", "receding"]
    result = predictor.classify(ROOT / "demo" / "examples" / "moving_left.mp4")
    assert len(result.labels) == 5
    assert "python -m demo --bundle runs/quickstart-fast/bundle" in out


def readme_walkthrough_end() -> list[str]:
    """The lines the README says the quickstart ends with."""
    text = (ROOT / "README.md").read_text()
    section = text.split("<!-- section: walkthrough -->", 1)[1]
    return re.search(r"```text\n(.*?)```", section, re.S).group(1).splitlines()


def test_quickstart_skips_finished_steps_and_ends_as_the_readme_shows(quickstart_run, clone):
    import httpx
    from helpers import stop_process as stop

    from stadapter_deploy.net import free_port

    port = free_port()
    proc = subprocess.Popen(
        [str(clone / "quickstart.sh"), "--fast", "--port", str(port)],
        cwd=clone,
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
        for shown in readme_walkthrough_end():  # the README's port is 7860
            assert shown.replace(":7860/", f":{port}/") in out, (shown, out)
        assert out.count("skipped:") == 4  # environment, data, training, export were all done already
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 200
    finally:
        stop(proc)


def test_a_full_run_after_a_fast_one_makes_its_own_data(quickstart_run, clone):
    """The README's 'delete runs/quickstart to start over' after a --fast run: the full run writes its 720
    clips into runs/quickstart/data; the fast run's 72 never stand in for them (they did: val_acc1 8.33)."""
    proc = subprocess.Popen(
        [str(clone / "quickstart.sh"), "--no-serve"],
        cwd=clone,
        env=quickstart_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines = []
    try:
        for line in proc.stdout:  # up to the training step, which takes minutes: not needed here
            lines.append(line)
            if line.startswith("==> [3/5]"):
                break
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    out = "".join(lines)
    assert "==> [2/5] Synthetic motion dataset in runs/quickstart/data" in out and "holds the" not in out, out
    data = clone / "runs" / "quickstart" / "data"
    assert len((data / "train.txt").read_text().splitlines()) == 600
    assert len((data / "val.txt").read_text().splitlines()) == 120
    fast = clone / "runs" / "quickstart-fast" / "data" / "train.txt"
    assert len(fast.read_text().splitlines()) == 48  # untouched


def test_a_folder_made_with_other_settings_is_refused_in_one_line(quickstart_run, clone):
    fast = "runs/quickstart-fast"
    cases = [
        (["--dir", fast], f"{fast} was made with other settings (mode: fast; this run: full)"),
        (["--fast", "--epochs", "2", "--no-serve"], f"{fast} was made with other settings (epochs: 1; this run: 2)"),
        (
            ["--data", f"{fast}/data", "--dir", "runs/other"],
            f"{fast}/data holds other data (synthetic motion clips: 48",
        ),
    ]
    for args, words in cases:
        proc = quickstart(clone, *args, "--no-serve")
        assert proc.returncode == 2 and proc.stdout == "", (args, proc.stdout)
        assert proc.stderr.count("\n") == 1 and words in proc.stderr, (args, proc.stderr)


def write_tiny_clip(path: Path) -> Path:
    from weight_files import clip_backbone, write_torchscript

    _, backbone = clip_backbone(patch=8, size=32, width=64, layers=2, seed=5)
    return write_torchscript(path, backbone)


@pytest.mark.slow
def test_clip_infers_the_architecture_and_keeps_its_own_folder(tmp_path):
    """--clip without --preset: the architecture the file holds (the script used to force ViT-B/16's)."""
    shutil.copy(SCRIPT, tmp_path / "quickstart.sh")
    weights = write_tiny_clip(tmp_path / "tiny-clip.pt")
    proc = quickstart(tmp_path, "--fast", "--no-serve", "--clip", str(weights))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "model ViT(w=64,l=2,p=8)@32px (inferred from tiny-clip.pt;" in proc.stdout
    assert (tmp_path / "runs" / "quickstart-clip-fast" / "bundle" / "manifest.json").is_file()


def test_every_option_is_checked_in_one_line(tmp_path):
    cases = [
        (["--epochs"], "--epochs needs a value"),
        (["--epochs", "--fast"], "--epochs needs a value"),
        (["--epochs", "two"], "--epochs (or QUICKSTART_EPOCHS) must be a whole number of at least 1, got 'two'"),
        (["--epochs", "0"], "must be a whole number of at least 1"),
        (["--port", "70000"], "--port must be a number from 1 to 65535"),
        (["--port"], "--port needs a value"),
        (["--dir"], "--dir needs a value"),
        (["--data"], "--data needs a value"),
        (["--host"], "--host needs a value"),
        (["--preset"], "--preset needs a value"),
        (["--clip", str(tmp_path / "missing.pt")], "no such file"),
        (["--dir", str(SCRIPT)], "is a file, not a folder"),
        (["--frobnicate"], "unknown option '--frobnicate'"),
    ]
    for args, words in cases:
        proc = subprocess.run([str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and proc.stdout == "", args
        assert proc.stderr.count("\n") == 1 and words in proc.stderr, (args, proc.stderr)
    for variable, value in (("QUICKSTART_FAST", "2"), ("QUICKSTART_SERVE", "yes"), ("QUICKSTART_EPOCHS", "-1")):
        env = {**quickstart_env(), variable: value}
        proc = subprocess.run([str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and variable in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


def test_an_unknown_preset_is_one_line(tmp_path):
    """Checked after step 1 (it needs the package), before any data or training."""
    shutil.copy(SCRIPT, tmp_path / "quickstart.sh")
    proc = quickstart(tmp_path, "--fast", "--no-serve", "--preset", "vit_b99")
    (line,) = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and line.startswith("quickstart: --preset: unknown preset 'vit_b99'; choose one of")
    assert not (tmp_path / "runs" / "quickstart-fast" / "data").exists()
