"""Write tests/data/tensorrt_api_names.txt: the Python API names present in BOTH TensorRT 10.12 and 11.x.

    python tests/data/make_tensorrt_api_names.py   # needs PyPI (pip download) and binutils' `strings`

It downloads the two `tensorrt-cu12-bindings` wheels (no dependencies, about 1 MB each), lists the
identifier-shaped strings of each one's pybind11 module `tensorrt_bindings/tensorrt.so` (the names
its classes, methods, enum values and keyword arguments are registered under) plus the names its
`__init__.py` defines, and keeps those both versions hold. tests/test_tensorrt.py holds every
TensorRT name our build and runner code uses against this list, so a name that 11 removed
(BuilderFlag.FP16, EXPLICIT_BATCH, ...) fails there without TensorRT installed.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

VERSIONS = ("10.12.0.36", "11.4.0.106")
OUT = Path(__file__).with_name("tensorrt_api_names.txt")
# snake_case methods/arguments, UPPER_CASE enum values, CamelCase classes; not mangled C++ symbols
NAME = re.compile(r"[a-z][a-z0-9_]{2,}|[A-Z][A-Z0-9_]{2,}|[A-Z][A-Za-z0-9]{3,}")
MANGLED = re.compile(r"pybind|nvinfer|nvonnx|^FN|^N[0-9]|St[0-9]")


def wheel_names(version: str, folder: Path) -> set[str]:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder)]
    subprocess.run([*cmd, f"tensorrt-cu12-bindings=={version}"], check=True)
    wheel = next(folder.glob(f"tensorrt_cu12_bindings-{version}-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        module = z.read("tensorrt_bindings/tensorrt.so")
        init = z.read("tensorrt_bindings/__init__.py").decode()
    so = folder / f"{version}.so"
    so.write_bytes(module)
    strings = subprocess.run(["strings", "-n", "2", str(so)], check=True, capture_output=True, text=True).stdout
    names = {s for s in strings.splitlines() if NAME.fullmatch(s) and not MANGLED.search(s)}
    for node in ast.parse(init).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        per_version = [wheel_names(v, Path(tmp)) for v in VERSIONS]
    both = sorted(set.intersection(*per_version))
    header = [
        f"# TensorRT Python API names present in both tensorrt-cu12-bindings {' and '.join(VERSIONS)}",
        "# written by tests/data/make_tensorrt_api_names.py (strings of tensorrt_bindings/tensorrt.so + __init__.py)",
    ]
    OUT.write_text("\n".join(header + both) + "\n")
    print(f"{len(both)} names -> {OUT}")


if __name__ == "__main__":
    main()
