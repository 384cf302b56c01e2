"""Read the tensors of a TorchScript archive (OpenAI's CLIP release files) without running it.

`torch.jit.load` compiles the archive's `code/` and runs it: a module's `__setstate__` runs at load,
and TorchScript can open files (`torch.from_file`), so a file made by a stranger can read and write the
loader's files. The tensors need none of that. An archive is a zip: `<name>/data.pkl` pickles the module
tree (objects of `__torch__.*` classes holding their attributes), and each tensor's bytes sit in
`<name>/data/<key>`. This reads `data.pkl` with an unpickler that builds only plain objects, tensors and
the containers those need; every other global is refused. The code is never read.
"""

from __future__ import annotations

import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch

STORAGE_DTYPES = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class TorchScriptError(ValueError):
    """The archive is not one this reader can take as plain weights."""


class ScriptObject:
    """A `__torch__.*` object (a module) as data: its attributes in __dict__, nothing of its class."""

    def __setstate__(self, state) -> None:
        if not isinstance(state, dict):  # what the class's own __getstate__ made: only its code could read it
            raise TorchScriptError(
                f"its {type(self).__name__} sets its state with its own code (__setstate__), which runs when "
                "TorchScript loads it; a weight file needs none"
            )
        self.__dict__.update(state)


def _script_class(qualified: str) -> type:
    return type(qualified, (ScriptObject,), {})


def is_torchscript(path: Path) -> bool:
    """A zip whose top folder holds a `data.pkl` beside `code/` (what torch.jit.save writes)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def read_torchscript_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """{dotted name: tensor} of every tensor attribute in the archive's module tree (parameters and
    buffers, as `state_dict()` names them). TorchScriptError if the archive holds anything else."""
    with zipfile.ZipFile(path) as zf:
        (data_pkl,) = [n for n in zf.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")] or [None]
        if data_pkl is None:
            raise TorchScriptError("it is a zip without a TorchScript data.pkl")
        root = _ArchiveUnpickler(zf, data_pkl.rsplit("/", 1)[0]).load()
    if not isinstance(root, ScriptObject):
        raise TorchScriptError(f"its data.pkl holds a {type(root).__name__}, not a module")
    return dict(_tensors(root, ""))


def _tensors(obj: ScriptObject, prefix: str):
    for name, value in vars(obj).items():
        if isinstance(value, torch.Tensor):
            yield prefix + name, value
        elif isinstance(value, ScriptObject):
            yield from _tensors(value, f"{prefix}{name}.")


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    return torch.as_strided(storage, tuple(size), tuple(stride), offset).clone()


def _rebuild_parameter(tensor, requires_grad=False, hooks=None, state=None):
    return tensor


class _ArchiveUnpickler(pickle.Unpickler):
    ALLOWED = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("collections", "OrderedDict"): OrderedDict,
    }

    def __init__(self, zf: zipfile.ZipFile, folder: str):
        self.zf, self.folder = zf, folder
        super().__init__(zf.open(f"{folder}/data.pkl"))

    def find_class(self, module: str, name: str):
        if module.startswith("__torch__"):
            return _script_class(f"{module}.{name}")
        if module == "torch" and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        raise TorchScriptError(f"it holds {module}.{name}, which a weight file does not need")

    def persistent_load(self, pid):
        """('storage', dtype, key, location, numel) -> the storage's elements as a 1-D tensor."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], torch.dtype)):
            raise TorchScriptError(f"it refers to data of an unknown kind ({str(pid)[:60]})")
        _, dtype, key, _, numel = pid
        try:
            raw = self.zf.read(f"{self.folder}/data/{key}")
        except KeyError:
            raise TorchScriptError(f"its tensor data {key!r} is missing") from None
        itemsize = torch.empty((), dtype=dtype).element_size()
        if not isinstance(numel, int) or len(raw) < numel * itemsize:
            raise TorchScriptError(f"its tensor data {key!r} is shorter than it declares")
        if numel == 0:
            return torch.empty(0, dtype=dtype)
        return torch.frombuffer(bytearray(raw[: numel * itemsize]), dtype=dtype)
