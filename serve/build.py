"""Build a bento that carries a model bundle: `python -m serve.build --bundle DIR [--gpu] [--no-lock]`.

The bentofile includes `bundle/**`; this stages the service code and the chosen bundle (checked first)
in a temporary folder, with the bundle as `bundle/`, writes the image into the staged bentofile and runs
`bentoml build` there. Inside the bento the service finds `bundle/` on its own (serve/settings.py).

The image is described in BentoML's own terms (the bentofile's `docker` and `python` sections, from
which BentoML generates the Dockerfile), and holds exactly one of pyproject.toml's runtime extras
(onnxruntime and onnxruntime-gpu must never share an environment):
- cpu (default): BentoML's python:3.11-slim (Debian), torch's CPU build from PyTorch's CPU index, so
  no CUDA package, and onnxruntime;
- gpu (--gpu): NVIDIA's CUDA image with cuDNN, torch's CUDA build (PyPI's torch is built for the same
  CUDA), onnxruntime-gpu and TensorRT.
Both get the system libraries the video decoders' wheels load from the system (bentofile.yaml's
`docker.system_packages`; PyAV and decord carry their own FFmpeg). BentoML locks every package version
at build time (uv, against PyPI and, for cpu, PyTorch's index); --no-lock keeps the declared
requirements as they are, for a machine that cannot reach an index.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from serve.settings import ROOT, find_bundle
from stadapter_deploy.errors import STAdapterError
from stadapter_deploy.runtime import load_bundle

CODE = ("serve", "stadapter_deploy")
UI_PACKAGES = ("gradio", "gradio_client")
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# CUDA 13.0: what PyPI's torch 2.13.0, onnxruntime-gpu (1.31) and TensorRT (tensorrt-cu13) are built for.
CUDA_BASE_IMAGE = "nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04"


@dataclass(frozen=True)
class Image:
    name: str  # also the pyproject extra it holds
    base_image: str | None  # None: BentoML's python:<version>-slim
    torch_build: str  # torch's local version label ("cpu"), or "" for PyPI's own build
    index: str | None  # the extra index that build comes from
    system_packages: tuple[str, ...] = ()  # besides bentofile.yaml's
    envs: tuple[tuple[str, str], ...] = ()


IMAGES = {
    "cpu": Image("cpu", None, "cpu", TORCH_CPU_INDEX),
    # The CUDA image has no Python: BentoML installs its uv with pip, here Ubuntu's, beside the system's Python
    # (PEP 668 says no without the variable); uv then makes the bento's own Python and venv. Ubuntu's Python
    # brings tzdata, which asks for a time zone unless apt runs noninteractive.
    "gpu": Image(
        "gpu",
        CUDA_BASE_IMAGE,
        "",
        None,
        ("python3-pip",),
        (("PIP_BREAK_SYSTEM_PACKAGES", "1"), ("DEBIAN_FRONTEND", "noninteractive")),
    ),
}


def bento_packages(image: Image = IMAGES["cpu"], pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """The image's Python packages, from the one place they are declared: pyproject.toml's dependencies
    plus the image's extra, torch as the image's build of the pinned version. The bento carries no demo/,
    so gradio stays out."""
    from packaging.requirements import Requirement

    project = tomllib.loads(pyproject.read_text())["project"]
    packages = []
    for line in [*project["dependencies"], *project["optional-dependencies"][image.name]]:
        requirement = Requirement(line)
        if requirement.name in UI_PACKAGES:
            continue
        if requirement.name == "torch" and image.torch_build:
            (pin,) = requirement.specifier  # pyproject pins torch exactly: ==X
            line = f"torch{pin}+{image.torch_build}"
        packages.append(line)
    return packages


def bentofile(image: Image, lock: bool) -> dict:
    """bentofile.yaml with the image filled in."""
    import yaml

    config = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    config["labels"] = {**config.get("labels", {}), "image": image.name}
    docker = config.setdefault("docker", {})
    docker["system_packages"] = [*docker.get("system_packages", []), *image.system_packages]
    if image.base_image:
        docker["base_image"] = image.base_image
    if image.envs:
        config["envs"] = [*config.get("envs", []), *({"name": k, "value": v} for k, v in image.envs)]
    python = {**config.get("python", {}), "packages": bento_packages(image), "lock_packages": lock}
    if image.index:
        python["extra_index_url"] = [image.index]
    config["python"] = python
    return config


def stage(bundle: Path, folder: Path, image: Image = IMAGES["cpu"], lock: bool = True) -> None:
    """Copy the code, the bentofile (with the image) and the bundle (as bundle/) into `folder`."""
    import yaml

    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in CODE:
        shutil.copytree(ROOT / name, folder / name, ignore=ignore)
    (folder / "bentofile.yaml").write_text(yaml.safe_dump(bentofile(image, lock), sort_keys=False))
    shutil.copytree(bundle, folder / "bundle", ignore=ignore)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serve.build", description=__doc__.splitlines()[0])
    p.add_argument(
        "--bundle",
        type=Path,
        help="model bundle to pack (default: as `bentoml serve` finds it: STADAPTER_BUNDLE, else bundle/, "
        "else runs/quickstart/bundle)",
    )
    p.add_argument(
        "--gpu",
        action="store_true",
        help=f"the GPU image ({CUDA_BASE_IMAGE}, torch's CUDA build, onnxruntime-gpu, TensorRT) instead of "
        "the CPU one (python:3.11-slim, torch's CPU build, onnxruntime)",
    )
    p.add_argument(
        "--no-lock",
        action="store_true",
        help="keep the declared requirements unlocked (default: BentoML locks every version at build time, "
        "which needs PyPI and, for the CPU image, download.pytorch.org)",
    )
    p.add_argument("--version", help="bento version tag (default: BentoML's generated one)")
    args = p.parse_args(argv)
    try:
        bundle = (args.bundle or find_bundle(os.environ.get("STADAPTER_BUNDLE", "").strip() or None)).resolve()
        load_bundle(bundle, verify=True)
    except (STAdapterError, ValueError) as e:
        print(f"serve.build: {e}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="stadapter-bento-") as tmp:
        folder = Path(tmp)
        stage(bundle, folder, IMAGES["gpu" if args.gpu else "cpu"], lock=not args.no_lock)
        command = [sys.executable, "-m", "bentoml", "build", ".", "-f", "bentofile.yaml"]
        if args.version:
            command += ["--version", args.version]
        env = {**os.environ, "STADAPTER_BUNDLE": str(folder / "bundle")}
        code = subprocess.run(command, cwd=folder, env=env).returncode
    if code and not args.no_lock:
        print(
            "serve.build: bentoml build failed; where it could not lock the packages (an index out of reach), "
            "--no-lock builds with the declared requirements",
            file=sys.stderr,
        )
    return code


if __name__ == "__main__":
    sys.exit(main())
