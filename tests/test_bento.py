"""The bento and its two images (`python -m serve.build`): each built for real, its generated Dockerfile and
requirements read. No container engine runs here, so `bentoml containerize` is not (README says so)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from serve.build import CUDA_BASE_IMAGE, TORCH_CPU_INDEX

ROOT = Path(__file__).resolve().parents[1]
SITE = Path(pytest.__file__).resolve().parents[1]  # this environment's site-packages
CUDA_PACKAGE = re.compile(r"^(nvidia-|cuda-|triton|tensorrt)", re.M)


def build(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    """Run serve.build with a private BentoML home; (the process, the bento's folder for version `args`'s)."""
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"}
    env.pop("STADAPTER_BUNDLE", None)
    done = subprocess.run(
        [sys.executable, "-m", "serve.build", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    version = args[args.index("--version") + 1] if "--version" in args else ""
    return done, tmp_path / "bentoml" / "bentos" / "stadapter" / version


def requirement_names(requirements: str) -> set[str]:
    return {
        re.split(r"[=<>~;@ \[]", line, maxsplit=1)[0].lower()
        for line in requirements.splitlines()
        if line[:1].isalpha()
    }


def test_the_cpu_bento_packs_the_bundle_and_no_cuda(tiny_bundle, tmp_path):
    """Unlocked here: locking the CPU image needs download.pytorch.org, which this machine cannot reach."""
    done, bento = build(tmp_path, "--bundle", str(tiny_bundle), "--version", "cpu", "--no-lock")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    src = bento / "src"
    assert (src / "serve" / "service.py").is_file()
    assert (src / "bundle" / "manifest.json").read_bytes() == (tiny_bundle / "manifest.json").read_bytes()
    assert (src / "bundle" / "model.onnx").stat().st_size == (tiny_bundle / "model.onnx").stat().st_size
    requirements = (bento / "env" / "python" / "requirements.txt").read_text()
    assert f"--extra-index-url {TORCH_CPU_INDEX}" in requirements.splitlines()
    assert "torch==2.13.0+cpu" in requirements.splitlines()  # the pinned version, its CPU build
    names = requirement_names(requirements)
    assert "onnxruntime" in names and not names & {"onnxruntime-gpu", "tensorrt", "gradio"}
    assert not CUDA_PACKAGE.search(requirements)
    dockerfile = (bento / "env" / "docker" / "Dockerfile").read_text()
    assert "FROM python:3.11-slim AS base-container" in dockerfile
    assert "apt-get install -q -y -o Dpkg::Options::=--force-confdef libstdc++6 libgcc-s1 zlib1g\n" in dockerfile
    assert "pip install -r $BENTO_PATH/env/python/requirements.txt" in dockerfile
    assert yaml.safe_load((bento / "bento.yaml").read_text())["labels"]["image"] == "cpu"


def test_the_gpu_bento_locks_one_cuda_for_torch_onnxruntime_and_tensorrt(tiny_bundle, tmp_path):
    """Locked against PyPI: torch's CUDA build, onnxruntime-gpu and TensorRT 10.12+ or 11, all for the CUDA major
    of the base image, and no onnxruntime (CPU) beside onnxruntime-gpu."""
    done, bento = build(tmp_path, "--bundle", str(tiny_bundle), "--version", "gpu", "--gpu")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    requirements = (bento / "env" / "python" / "requirements.txt").read_text()
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^\s;]+)", requirements, re.M))
    assert pins["torch"] == "2.13.0" and "onnxruntime-gpu" in pins and "onnxruntime" not in pins
    trt = tuple(int(x) for x in pins["tensorrt"].split(".")[:2])
    assert (10, 12) <= trt < (12, 0)
    cuda = CUDA_BASE_IMAGE.split(":")[1].split(".")[0]  # "13" of nvidia/cuda:13.0.1-...
    assert pins["nvidia-cuda-runtime"].split(".")[0] == cuda  # torch's CUDA runtime
    assert f"tensorrt-cu{cuda}" in pins
    assert (bento / "src" / "bundle" / "manifest.json").is_file()
    dockerfile = (bento / "env" / "docker" / "Dockerfile").read_text()
    assert f"FROM {CUDA_BASE_IMAGE} AS base-container" in dockerfile
    assert "libstdc++6 libgcc-s1 zlib1g python3-pip\n" in dockerfile
    assert dockerfile.index("ENV PIP_BREAK_SYSTEM_PACKAGES") < dockerfile.index("pip install --no-cache-dir")
    assert dockerfile.index("ENV DEBIAN_FRONTEND") < dockerfile.index("apt-get install")
    assert "uv venv --python 3.11 /app/.venv" in dockerfile


def test_the_images_install_what_the_decoders_wheels_load_from_the_system():
    """PyAV and decord carry their own FFmpeg; what their shared objects (and onnxruntime's) load from outside
    their wheels comes from Debian packages, each listed in bentofile.yaml (libc6 is in every base)."""
    folders = [SITE / name for name in ("av", "av.libs", "decord", "decord.libs", "onnxruntime")]
    objects = [p for folder in folders for p in folder.rglob("*.so*") if p.is_file()]
    assert len(objects) > 10
    loaded = set()
    for path in objects:
        ldd = subprocess.run(["ldd", str(path)], capture_output=True, text=True).stdout
        loaded |= {Path(m) for m in re.findall(r"=> (/\S+) \(", ldd) if not m.startswith(str(SITE))}
    packages = {debian_package(path) for path in loaded}
    declared = set(yaml.safe_load((ROOT / "bentofile.yaml").read_text())["docker"]["system_packages"])
    assert "zlib1g" in packages and "libstdc++6" in packages
    assert packages - {"libc6"} <= declared, packages


def debian_package(path: Path) -> str:
    for candidate in (path, path.resolve()):  # dpkg knows the file by one of its names (usrmerge)
        found = subprocess.run(["dpkg", "-S", str(candidate)], capture_output=True, text=True)
        if found.returncode == 0:
            return found.stdout.split(":")[0]
    raise AssertionError(f"no Debian package holds {path}")


def test_serve_build_without_a_bundle_says_what_to_do(tmp_path):
    """No --bundle: the bundle `bentoml serve` would take (STADAPTER_BUNDLE here), refused in one line."""
    env = {**os.environ, "STADAPTER_BUNDLE": str(tmp_path / "nowhere"), "BENTOML_HOME": str(tmp_path / "b")}
    done = subprocess.run([sys.executable, "-m", "serve.build"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().startswith("serve.build:") and len(done.stderr.strip().splitlines()) == 1
    bad = subprocess.run(
        [sys.executable, "-m", "serve.build", "--bundle", str(tmp_path / "nowhere")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and bad.stderr.strip().startswith("serve.build:")
