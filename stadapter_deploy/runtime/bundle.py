"""The model bundle: the one contract between export and everything downstream.

A bundle is a directory:

    manifest.json       schema version, architecture, preprocessing, artifacts (+ sha256), parity, versions
    labels.txt          one class name per line, index = line number
    config.json         our checkpoint config (the torch backend reads it with model.safetensors)
    model.safetensors   full fp32 weights
    model.onnx          fp32 ONNX, dynamic batch
    model.fp16.onnx     optional: half precision ONNX (LayerNorm and softmax in fp32)
    *.plan              optional: TensorRT FP16 engine (strongly typed, from model.fp16.onnx), named
                        after the GPU and TensorRT version it runs on
    README.md           a short model card

`load_bundle` checks the manifest and every artifact's size and sha256; a modified or truncated
file raises BundleError.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import BundleError
from ..labels import read_labels
from ..model.config import ModelConfig
from ..preprocessing import Preprocessing

SCHEMA_VERSION = "stadapter-deploy/bundle-v1"
MANIFEST_FILE = "manifest.json"
LABELS_FILE = "labels.txt"
README_FILE = "README.md"
INPUT_NAME = "clips"
OUTPUT_NAME = "logits"
FEATURES_NAME = "features"  # the pooled clip features [N, D] the head reads (bundles from before issue 26 lack it)
PREPROCESSING_KEYS = ("num_frames", "sampling_rate", "size", "mean", "std", "spatial_views", "temporal_views")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_entry(folder: Path, name: str) -> dict:
    """{"file", "sha256", "bytes"} of a file inside the bundle folder."""
    path = folder / name
    return {"file": name, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def artifact_entry(
    folder: Path,
    name: str,
    *,
    backend: str,
    precision: str,
    batch: tuple[int, int | None] = (1, None),
    extra_files: list[str] = (),
    outputs: tuple[str, ...] = (OUTPUT_NAME, FEATURES_NAME),
    **fields,
) -> dict:
    """A manifest artifact: the file with its checksum, how to run it, its outputs and the batch range it takes.

    batch: (min, max); max None means any batch size. extra_files: files the artifact needs beside
    it (ONNX external data, the torch backend's config.json), each checksummed too.
    """
    return {
        **file_entry(folder, name),
        "backend": backend,
        "precision": precision,
        "inputs": [INPUT_NAME],
        "outputs": list(outputs),
        "batch": {"min": batch[0], "max": batch[1]},
        "extra_files": [file_entry(folder, f) for f in extra_files],
        **fields,
    }


@dataclass
class Bundle:
    path: Path
    manifest: dict
    labels: list[str]
    config: ModelConfig
    preprocessing: Preprocessing

    @property
    def model_name(self) -> str:
        return self.manifest.get("model_name", self.path.name)

    @property
    def artifacts(self) -> list[dict]:
        return list(self.manifest["artifacts"])

    def find(self, backend: str, precision: str | None = None) -> list[dict]:
        """Artifacts for `backend`, fp32 first unless a precision is asked for."""
        found = [a for a in self.artifacts if a["backend"] == backend]
        if precision is not None:
            found = [a for a in found if a["precision"] == precision]
        return sorted(found, key=lambda a: a["precision"] != "fp32")

    def file(self, artifact: dict) -> Path:
        return self.path / artifact["file"]


# ----------------------------------------------------------------------------- reading


def load_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Read a bundle directory; with verify, refuse it if any listed file is missing or changed."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"model bundle not found: {path} is not a directory")
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise BundleError(f"{path} is not a model bundle: it has no {MANIFEST_FILE} (make one with stadapter-export)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{manifest_path} is not valid JSON: {e}") from e
    check_manifest(manifest, manifest_path)
    files = [
        f for entry in [manifest["labels"], *manifest["artifacts"]] for f in [entry, *entry.get("extra_files", [])]
    ]
    for f in files:
        check_inside(path, f["file"])
    if verify:
        for f in files:
            verify_file(path, f)
    labels = read_labels(path / manifest["labels"]["file"], error=BundleError)
    config = ModelConfig.from_dict(manifest["config"])
    preprocessing = Preprocessing.from_dict(manifest["preprocessing"])
    bundle = Bundle(path=path, manifest=manifest, labels=labels, config=config, preprocessing=preprocessing)
    check_fits(bundle)
    return bundle


def check_inside(folder: Path, name: str) -> None:
    """A manifest names files inside its bundle only: no absolute paths, no way out with '..'."""
    if not isinstance(name, str) or not (folder / name).resolve().is_relative_to(folder.resolve()):
        raise BundleError(f"{folder}: the manifest names {name!r}, a file outside the bundle; refusing it")


def check_fits(bundle: Bundle) -> None:
    """The manifest, the labels and every artifact agree on the input shape and the number of classes,
    so a mismatched bundle stops at load with one line instead of failing on every request."""
    cfg, pre, where = bundle.config, bundle.preprocessing, bundle.path
    problems = []
    if len(bundle.labels) != cfg.num_classes:
        problems.append(f"{len(bundle.labels)} labels for a model with {cfg.num_classes} classes")
    declared = bundle.manifest.get("num_classes", cfg.num_classes)
    if declared != cfg.num_classes:
        problems.append(f"num_classes is {declared} but the model config says {cfg.num_classes}")
    if pre.size != cfg.image_size:
        problems.append(f"preprocessing size {pre.size} but the model takes {cfg.image_size}x{cfg.image_size}")
    for artifact in bundle.find("onnxruntime"):
        listed = {f["file"] for f in artifact.get("extra_files", [])}
        problems += onnx_mismatches(bundle.file(artifact), pre.clip_shape, cfg.num_classes, cfg.width, listed)
    if problems:
        raise BundleError(f"{where}: the bundle does not fit its model: " + "; ".join(problems))


def onnx_mismatches(
    path: Path, clip_shape: tuple[int, ...], num_classes: int, width: int, listed: set[str] = frozenset()
) -> list[str]:
    """Compare an ONNX graph's declared input [N, 3, T, S, S] and outputs [N, C] (and, where it has them,
    features [N, D]) with what the manifest says, and its external data files with the artifact's
    `extra_files` (each checksummed): ONNX Runtime would load any file a graph names beside it, so one the
    manifest does not list is refused."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as e:  # protobuf raises its own errors on a corrupt file
        return [f"{path.name} is not a readable ONNX model ({type(e).__name__})"]
    unlisted = sorted(external_data_files(graph) - set(listed))
    if unlisted:
        return [f"{path.name} loads weights from {unlisted}, which the manifest does not list (so no checksum)"]
    dims = lambda value: [d.dim_value or None for d in value.type.tensor_type.shape.dim]  # None: symbolic
    got_in, got_out = dims(graph.input[0])[1:], dims(graph.output[0])[1:]
    out = []
    if got_in != list(clip_shape):
        takes, makes = ", ".join(map(str, got_in)), ", ".join(map(str, clip_shape))
        out.append(f"{path.name} takes clips of [N, {takes}] but the preprocessing makes [N, {makes}]")
    if got_out != [num_classes]:
        out.append(
            f"{path.name} outputs {got_out[0] if got_out else '?'} classes, the labels and config say {num_classes}"
        )
    features = [dims(o)[1:] for o in graph.output if o.name == FEATURES_NAME]
    if features and features[0] != [width]:
        out.append(f"{path.name} outputs features of [N, {', '.join(map(str, features[0]))}], the config says {width}")
    return out


def external_data_files(graph) -> set[str]:
    """The files an ONNX graph's tensors keep their data in (initializers, node attributes, subgraphs)."""
    import onnx

    found = set()
    tensors = list(graph.initializer)
    for node in graph.node:
        for attr in node.attribute:
            tensors += [attr.t] if attr.HasField("t") else []
            tensors += list(attr.tensors)
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                found |= external_data_files(sub)
    for tensor in tensors:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            found |= {entry.value for entry in tensor.external_data if entry.key == "location"}
    return found


def check_manifest(manifest: dict, where: Path) -> None:
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        found = manifest.get("schema_version") if isinstance(manifest, dict) else None
        raise BundleError(f"{where}: unsupported bundle schema {found!r} (this version reads {SCHEMA_VERSION!r})")
    missing = [k for k in ("config", "labels", "preprocessing", "artifacts") if k not in manifest]
    if missing:
        raise BundleError(f"{where}: manifest lacks {missing}")
    lacking = [k for k in PREPROCESSING_KEYS if k not in manifest["preprocessing"]]
    if lacking:
        raise BundleError(f"{where}: preprocessing lacks {lacking}")
    try:
        Preprocessing.from_dict(manifest["preprocessing"])
    except (TypeError, ValueError) as e:
        raise BundleError(f"{where}: bad preprocessing: {e}") from e
    if not manifest["artifacts"]:
        raise BundleError(f"{where}: the bundle lists no artifacts")
    try:
        ModelConfig.from_dict(manifest["config"])
    except (TypeError, ValueError) as e:
        raise BundleError(f"{where}: bad architecture config: {e}") from e


def verify_file(folder: Path, entry: dict) -> None:
    path = folder / entry["file"]
    if not path.is_file():
        raise BundleError(f"bundle file missing: {path}")
    size = path.stat().st_size
    if "bytes" in entry and size != entry["bytes"]:
        raise BundleError(
            f"bundle file {path} is {size} bytes, the manifest says {entry['bytes']}: truncated or modified"
        )
    if sha256_file(path) != entry["sha256"]:
        raise BundleError(f"bundle file {path} fails its sha256 check: it was modified after export")


# ----------------------------------------------------------------------------- writing


class BundleWriter:
    """Write a bundle into a temporary folder next to `out`, then move it into place in one rename.

    with BundleWriter(out, overwrite=False) as w:
        ...write files into w.tmp...
        w.commit(manifest)
    An exception inside the block removes the temporary folder; `out` is untouched.
    """

    def __init__(self, out: str | Path, overwrite: bool = False):
        self.out = Path(out).absolute()
        self.overwrite = overwrite
        self.tmp: Path | None = None

    def __enter__(self) -> BundleWriter:
        out = self.out
        if out.exists() and not out.is_dir():
            raise BundleError(f"--out {out} exists and is a file, not a directory")
        if out.is_dir() and any(out.iterdir()) and not self.overwrite:
            raise BundleError(f"--out {out} exists and is not empty (pass --overwrite to replace it)")
        parent = out.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=parent))
        except OSError as e:
            raise BundleError(f"cannot write the bundle next to {out}: {e.strerror or e}") from e
        if out.is_dir() and not os.access(out, os.W_OK):
            raise BundleError(f"--out {out} is not writable")
        return self

    def commit(self, manifest: dict) -> Path:
        assert self.tmp is not None
        manifest_text = json.dumps(manifest, indent=2) + "\n"
        (self.tmp / MANIFEST_FILE).write_text(manifest_text)  # written last: its presence marks a whole bundle
        _share(self.tmp)
        if self.out.exists():
            old = self.out.with_name(f".{self.out.name}.old-{os.getpid()}")
            self.out.rename(old)
            self.tmp.rename(self.out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            self.tmp.rename(self.out)
        self.tmp = None
        return self.out

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


def _share(folder: Path) -> None:
    """Give the bundle the usual umask permissions (mkdtemp and some writers create owner-only files)."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for f in folder.iterdir():
        f.chmod(0o666 & ~umask)
