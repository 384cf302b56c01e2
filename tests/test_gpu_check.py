"""benchmarks/gpu_check.py, the first command on a GPU machine, run here on the CPU: it refuses to
start without CUDA, and its self-test (--device cpu --tiny) goes through every step's code path that
needs no GPU, writing the same JSON and markdown."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
SELF_TEST = ["--device", "cpu", "--tiny", "--tests", "tests/test_model.py", "--compile-backend", "eager"]


def gpu_check(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def self_test(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    proc = gpu_check(str(out), *SELF_TEST)
    return proc, json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_cuda_it_says_so_in_one_line_and_writes_nothing(tmp_path):
    proc = gpu_check(str(tmp_path / "out"))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "gpu_check: needs an NVIDIA GPU with CUDA" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # the self-test: about 30 s on 2 cores
def test_the_self_test_runs_every_step_in_order(self_test):
    proc, report, _ = self_test
    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = {s["step"]: s for s in report["steps"]}
    assert list(steps) == ["tests", "parity", "eager", "cuda_graph", "compile"]
    assert steps["tests"]["status"] == "ok" and "skipped" in steps["tests"]["summary"]  # the GPU test, here
    assert steps["cuda_graph"] == {"step": "cuda_graph", "status": "skipped", "reason": "CUDA graphs need CUDA"}
    assert all(steps[s]["status"] == "ok" for s in ("parity", "eager", "compile"))
    assert "[gpu_check] parity: up to 60 s" in proc.stdout  # progress, with each step's budget


@pytest.mark.slow  # the self-test: about 30 s on 2 cores
def test_the_self_test_measures_parity_through_the_export_gate(self_test):
    _, report, _ = self_test
    parity = {r["variant"]: r for r in report["rows"] if r["step"] == "parity" and "variant" in r}
    assert list(parity) == ["fp32", "fp16", "bf16 autocast"]
    assert all(r["passed"] and r["random"]["n"] == 2 for r in parity.values())
    assert parity["fp32"]["random"]["rel_diff"] < 1e-4 < parity["fp16"]["random"]["rel_diff"]


@pytest.mark.slow  # the self-test: about 30 s on 2 cores
def test_the_self_test_times_each_form_and_batch(self_test):
    _, report, md = self_test
    speed = {(r["variant"], r["batch"]): r for r in report["rows"] if "clips_per_s" in r}
    forms = ("eager", "eager, shift form (as exported)", "torch.compile")
    assert set(speed) == {(form, batch) for form in forms for batch in (1, 2)}
    assert all(r["clips_per_s"] > 0 and r["runs"] >= 5 and r["tflops"] > 0 for r in speed.values())
    assert any("matmul" in r.get("variant", "") and r["tflops"] > 0 for r in report["rows"])
    assert "| fp32 (CPU self-test) forward | batch | clips/s |" in md and "| torch.compile | 2 |" in md
    assert "| precision (torch-cuda) | vs torch fp32 CPU |" in md


@pytest.mark.slow  # the self-test: about 30 s on 2 cores
def test_backends_this_machine_lacks_are_skipped_with_the_reason(self_test):
    from stadapter_deploy.runtime.runners.trt_runner import tensorrt_missing

    _, report, md = self_test
    if tensorrt_missing():
        assert report["skipped_backends"]["tensorrt"] == tensorrt_missing()
        assert f"| backend tensorrt | skipped | {tensorrt_missing()} |" in md
    assert report["machine"]["cpu_flags"] and report["machine"]["torch"] == torch.__version__


@pytest.mark.slow
def test_the_whole_run_keeps_to_its_budget(tmp_path):
    budget = 15
    start = time.monotonic()
    proc = gpu_check(str(tmp_path), *SELF_TEST, "--budget-s", str(budget))
    assert time.monotonic() - start < budget + 8
    statuses = [s["status"] for s in json.loads((tmp_path / "gpu_check.json").read_text())["steps"]]
    assert set(statuses) <= {"ok", "skipped", "timed out"} and set(statuses) & {"skipped", "timed out"}
    assert proc.returncode == (1 if "timed out" in statuses else 0)


def test_dense_fp16_peaks_match_the_gpu_names_torch_reports():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check_module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = gpu_check_module  # dataclasses look their module up there
    spec.loader.exec_module(gpu_check_module)
    peak = lambda name: gpu_check_module.peak_for(name, None)["tflops"]
    assert peak("NVIDIA H100 80GB HBM3") == peak("NVIDIA H200") == 989.5
    assert peak("NVIDIA H100 PCIe") == 756.5 and peak("NVIDIA H100 NVL") == 835.5
    assert peak("NVIDIA A100-SXM4-80GB") == peak("NVIDIA A100 80GB PCIe") == 312.0
    assert (peak("NVIDIA L40S"), peak("NVIDIA L40"), peak("NVIDIA L4")) == (362.05, 181.05, 121.0)
    assert peak("NVIDIA A10") == 125.0 and peak("NVIDIA A10G") is None and peak("Some New GPU") is None
    assert gpu_check_module.peak_for("Some New GPU", 500.0) == {"tflops": 500.0, "source": "--peak-tflops"}
