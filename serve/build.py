"""Build a bento that carries a model bundle: `python -m serve.build --bundle DIR`.

The bentofile includes `bundle/**`; this stages the service code and the chosen bundle (checked
first) in a temporary folder, with the bundle as `bundle/`, and runs `bentoml build` there. Inside
the bento the service finds `bundle/` on its own (serve/settings.py), so no variable is needed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
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


def bento_packages(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """The bento's Python packages, from the one place they are declared: pyproject.toml's dependencies
    plus the `cpu` extra (onnxruntime). The bento carries no demo/, so gradio stays out."""
    project = tomllib.loads(pyproject.read_text())["project"]
    packages = [*project["dependencies"], *project["optional-dependencies"]["cpu"]]
    return [p for p in packages if not p.startswith(UI_PACKAGES)]


def stage(bundle: Path, folder: Path) -> None:
    """Copy the code, the bentofile (with its packages filled in) and the bundle (as bundle/) into `folder`."""
    import yaml

    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in CODE:
        shutil.copytree(ROOT / name, folder / name, ignore=ignore)
    bentofile = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    bentofile["python"] = {**bentofile.get("python", {}), "packages": bento_packages()}
    (folder / "bentofile.yaml").write_text(yaml.safe_dump(bentofile, sort_keys=False))
    shutil.copytree(bundle, folder / "bundle", ignore=ignore)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serve.build", description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, help="model bundle to pack (default: as `bentoml serve` finds it)")
    p.add_argument("--version", help="bento version tag (default: BentoML's generated one)")
    args = p.parse_args(argv)
    try:
        bundle = (args.bundle or find_bundle()).resolve()
        load_bundle(bundle, verify=True)
    except (STAdapterError, ValueError) as e:
        print(f"serve.build: {e}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="stadapter-bento-") as tmp:
        folder = Path(tmp)
        stage(bundle, folder)
        command = [sys.executable, "-m", "bentoml", "build", ".", "-f", "bentofile.yaml"]
        if args.version:
            command += ["--version", args.version]
        env = {**os.environ, "STADAPTER_BUNDLE": str(folder / "bundle")}
        return subprocess.run(command, cwd=folder, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
