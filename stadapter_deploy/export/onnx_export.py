"""torch -> ONNX: fp32 with a dynamic batch, an optional fp16 copy, checked with onnx.checker.

Opset 17+ so every LayerNorm is one LayerNormalization node (TensorRT keeps it accurate in FP16
only in that form). T, H and W are fixed by the config; only the batch is dynamic.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import BundleError
from ..runtime.bundle import FEATURES_NAME, INPUT_NAME, OUTPUT_NAME

MIN_OPSET = 17
DEFAULT_OPSET = 18
# Protobuf cannot hold more than 2 GB: bigger models (ViT-L) keep their weights in one external file.
INLINE_LIMIT = 2**31 - (64 << 20)
# The adapter's temporal conv: 3 shifted multiply-adds on the token layout ("shift") or the literal
# Conv3d between two permutes ("conv3d"). Identical maths; "shift" ran faster in ONNX Runtime on CPU
# (docs/benchmarks.md, section export).
DEFAULT_CONV_FORM = "shift"


class ExportedOutputs(nn.Module):
    """What the exported graph computes: the logits and, with `features`, the pooled features the head
    reads (after ln_post, before fc), both float32 whatever the model's dtype (keep_io_types). The logits
    take the same path as the model's forward; the features are a tensor it computes anyway."""

    def __init__(self, model: nn.Module, features: bool = True):
        super().__init__()
        self.model = model
        self.with_features = features

    def forward(self, clips: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        features = self.model.features(clips)  # [B, D]; the model casts its input to its own dtype
        logits = self.model.head(features).float()  # [B, C]
        return (logits, features.float()) if self.with_features else logits


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
    form: str = DEFAULT_CONV_FORM,
    batch_example: int = 2,
    exporter: str = "torchscript",
    num_frames: int = 8,
    features: bool = True,
) -> Path:
    """Export `model` (fp32, eval) to `path`; external data beside it when over 2 GB. Returns `path`.

    The graph's outputs are `logits` [N, C] and, with `features` (the default since issue 26; False
    writes the graphs of older bundles), `features` [N, D], the pooled clip features the head reads.
    fp16: the exported graph computes in half precision with float32 inputs/outputs; LayerNorm runs in
    fp32 (the model's LayerNorm casts) and every Softmax is wrapped in casts so it accumulates in fp32.
    exporter: "torchscript" (torch.onnx.export(dynamo=False), fast and dependency-free) or "dynamo".
    """
    import onnx

    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} < {MIN_OPSET}: LayerNorm would not export as one LayerNormalization node")
    path = Path(path)
    cfg = model.cfg
    # T is fixed in the graph (the bundle's preprocessing says which); only the batch is dynamic
    example = torch.randn(batch_example, 3, num_frames, cfg.image_size, cfg.image_size)
    net = ExportedOutputs(_half_copy(model) if fp16 else model.eval(), features)
    outputs = [OUTPUT_NAME, FEATURES_NAME] if features else [OUTPUT_NAME]
    with (
        tempfile.TemporaryDirectory(dir=path.parent) as scratch,
        net.model.temporal_conv(form),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")  # tracer and deprecation warnings about constant shapes we rely on
        raw = Path(scratch) / "raw.onnx"
        _torch_export(net, example, raw, opset, exporter, outputs)
        proto = onnx.load(str(raw))  # pulls in any external data the exporter wrote
    if fp16:
        wrap_softmax_in_fp32(proto)
    save_onnx(proto, path)
    check_onnx(path)
    return path


def _half_copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).half().eval()


def _torch_export(net: nn.Module, example: torch.Tensor, path: Path, opset: int, exporter: str, outputs: list) -> None:
    names = dict(input_names=[INPUT_NAME], output_names=outputs, opset_version=opset)
    if exporter == "torchscript":
        axes = {name: {0: "batch"} for name in [INPUT_NAME, *outputs]}
        torch.onnx.export(
            net, (example,), str(path), **names, dynamo=False, do_constant_folding=True, dynamic_axes=axes
        )
    elif exporter == "dynamo":
        try:
            import onnxscript  # noqa: F401  (the dynamo exporter translates through it)
        except ImportError:
            raise ValueError("--exporter dynamo needs onnxscript (pip install onnxscript)") from None
        batch = torch.export.Dim("batch", min=1, max=4096)
        torch.onnx.export(net, (example,), str(path), **names, dynamo=True, dynamic_shapes=({0: batch},), verbose=False)
    else:
        raise ValueError(f"unknown exporter {exporter!r}; choose torchscript or dynamo")


def wrap_softmax_in_fp32(proto) -> int:
    """Cast the input of every Softmax to fp32 and its output back to fp16. Returns how many were wrapped."""
    from onnx import TensorProto, helper

    graph = proto.graph
    nodes, count = [], 0
    for node in graph.node:
        if node.op_type != "Softmax":
            nodes.append(node)
            continue
        src, dst = node.input[0], node.output[0]
        up, down = f"{src}__fp32_{count}", f"{dst}__fp32_{count}"
        nodes.append(helper.make_node("Cast", [src], [up], to=TensorProto.FLOAT, name=f"softmax_up_{count}"))
        node.input[0], node.output[0] = up, down
        nodes.append(node)
        nodes.append(helper.make_node("Cast", [down], [dst], to=TensorProto.FLOAT16, name=f"softmax_down_{count}"))
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return count


def save_onnx(proto, path: Path) -> None:
    """Save inline when under 2 GB (protobuf's limit), else with one external data file `<name>.data`."""
    import onnx

    data_file = path.with_name(path.name + ".data")
    data_file.unlink(missing_ok=True)
    size = sum(t.ByteSize() for t in proto.graph.initializer)
    if size < INLINE_LIMIT:
        onnx.save_model(proto, str(path))
    else:
        onnx.save_model(
            proto,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_file.name,
            size_threshold=1024,
        )


def external_data_file(path: Path) -> Path | None:
    data_file = path.with_name(path.name + ".data")
    return data_file if data_file.exists() else None


def check_onnx(path: str | Path) -> None:
    """onnx.checker on the file (path form, so models over 2 GB work); BundleError when it fails."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=False)
    except Exception as e:  # checker raises ValidationError; parse errors raise DecodeError or others
        raise BundleError(f"{path} is not a valid ONNX model: {str(e).splitlines()[0] if str(e) else e}") from e


def count_ops(path: str | Path) -> dict[str, int]:
    """Op type -> count over the main graph (used by tests and the manifest)."""
    import collections

    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return dict(collections.Counter(n.op_type for n in proto.graph.node))
