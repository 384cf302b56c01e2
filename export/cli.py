"""`stadapter-export`: a trained model -> a verified model bundle; `stadapter-export bench BUNDLE` times it.

Thin wiring over stadapter_deploy.runtime; every failure a user can cause ends in one line and a
non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stadapter_deploy.model.config import MLP_ACTIVATIONS

EXIT_ERROR = 1
EXIT_TRT_MISSING = 2


def export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stadapter-export",
        description="Export a trained ST-Adapter model to a model bundle (safetensors + ONNX [+ fp16 ONNX] "
        "[+ TensorRT FP16 plan]) with a parity check against the fp32 PyTorch model. "
        "`stadapter-export bench BUNDLE --help` benchmarks a bundle.",
    )
    src = p.add_argument_group("model (one of)")
    src.add_argument(
        "--checkpoint", type=Path, help="our training output: a directory with config.json + model.safetensors"
    )
    src.add_argument(
        "--clip", type=Path, help="CLIP weights (OpenAI ViT-B-16.pt, open_clip or Hugging Face file); needs --adapter"
    )
    src.add_argument("--adapter", type=Path, help="a reference ST-Adapter checkpoint-N.pth (unchanged); needs --clip")
    src.add_argument("--preset", help="architecture preset for --clip/--adapter (default: inferred from the weights)")
    src.add_argument(
        "--clip-activation",
        choices=MLP_ACTIVATIONS,
        help="the --clip backbone's MLP activation, needed where no config beside the file (Hugging Face "
        "config.json, open_clip_config.json) says it, and over one that does: quick_gelu (default: OpenAI's, "
        "open_clip's -quickgelu) or gelu (open_clip's LAION ViTs without -quickgelu)",
    )
    p.add_argument("--out", type=Path, required=True, help="bundle directory to create (must not exist or be empty)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out")
    p.add_argument(
        "--dataset",
        choices=["synthetic", "k400", "ssv2"],
        help="recipe for preprocessing and class names when the checkpoint does not record them",
    )
    p.add_argument(
        "--labels", type=Path, help="class-name file, one per line (default: checkpoint, dataset preset, or class_<i>)"
    )
    p.add_argument("--name", help="model name shown by the service and demo (default: from the architecture)")
    p.add_argument(
        "--fp16",
        action="store_true",
        help="also write model.fp16.onnx (LayerNorm/softmax in fp32) for ONNX Runtime on CUDA",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="also write model.int8.onnx for x86 CPUs (weight MatMuls in int8 with 7-bit weights, which every x86 "
        "int8 kernel sums exactly, VNNI or not; LayerNorm, softmax and adapters in float), which `auto` then "
        "prefers there; gated on top-1 agreement with fp32 on decoded clips and logit cosine",
    )
    p.add_argument(
        "--trt",
        action="store_true",
        help="also build a TensorRT FP16 engine, strongly typed from model.fp16.onnx (so --trt writes it too); "
        "needs TensorRT 10.12+ or 11.x and an NVIDIA GPU; without them the ONNX bundle is written and the exit "
        "code is 2",
    )
    p.add_argument("--trt-min-batch", type=int, default=1, help="TensorRT profile: smallest batch (default 1)")
    p.add_argument("--trt-opt-batch", type=int, default=8, help="TensorRT profile: batch tuned for (default 8)")
    p.add_argument("--trt-max-batch", type=int, default=32, help="TensorRT profile: largest batch (default 32)")
    p.add_argument(
        "--timing-cache",
        type=Path,
        default=None,
        help="TensorRT timing cache file, reused and updated (default ~/.cache/stadapter-deploy/tensorrt-timing.cache)",
    )
    p.add_argument("--opset", type=int, default=None, help="ONNX opset, at least 17 (default 18)")
    p.add_argument(
        "--temporal-conv",
        choices=["shift", "conv3d"],
        default=None,
        help="form of the adapter's temporal conv in the ONNX graph (default shift: faster in ONNX Runtime)",
    )
    p.add_argument(
        "--exporter",
        choices=["torchscript", "dynamo"],
        default="torchscript",
        help="torch.onnx exporter (default torchscript: fast, no extra dependency)",
    )
    p.add_argument(
        "--no-verify", action="store_true", help="skip the parity gate (figures are then absent from the manifest)"
    )
    p.add_argument(
        "--check-videos", type=int, default=3, help="generated videos decoded for the parity check (default 3)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run_export(argv: list[str]) -> int:
    args = export_parser().parse_args(argv)
    from stadapter_deploy.export.exporter import ExportOptions, export_bundle, load_source
    from stadapter_deploy.export.onnx_export import DEFAULT_CONV_FORM, DEFAULT_OPSET
    from stadapter_deploy.export.tensorrt_build import DEFAULT_TIMING_CACHE, BatchProfile

    profile = BatchProfile(args.trt_min_batch, args.trt_opt_batch, args.trt_max_batch)
    if args.check_videos < 1:
        raise ValueError("--check-videos must be at least 1")
    source = load_source(
        checkpoint=args.checkpoint,
        clip=args.clip,
        adapter=args.adapter,
        preset=args.preset,
        clip_activation=args.clip_activation,
        dataset=args.dataset,
        labels_file=args.labels,
        name=args.name,
    )
    options = ExportOptions(
        fp16=args.fp16,
        int8=args.int8,
        trt=args.trt,
        verify=not args.no_verify,
        overwrite=args.overwrite,
        opset=args.opset or DEFAULT_OPSET,
        conv_form=args.temporal_conv or DEFAULT_CONV_FORM,
        exporter=args.exporter,
        trt_profile=profile,
        timing_cache=args.timing_cache or DEFAULT_TIMING_CACHE,
        check_videos=args.check_videos,
        progress=not args.quiet,
    )
    result = export_bundle(source, args.out, options)
    print(summary(result.manifest, result.path))
    if result.trt_missing:
        print(
            f"stadapter-export: --trt skipped: {result.trt_missing}; wrote the ONNX bundle at {result.path}",
            file=sys.stderr,
        )
        return EXIT_TRT_MISSING
    return 0


def summary(manifest: dict, path: Path) -> str:
    lines = [f"wrote {path}: {manifest['model_name']}, {manifest['num_classes']} classes"]
    for a in manifest["artifacts"]:
        par = a.get("parity")
        if par is None:
            fig = "parity not verified"
        else:
            c, r = par["clips"], par["random"]
            fig = (
                f"parity clips: max|diff| {c['max_abs_diff']:.2e} / max|logit| {c['max_abs_logit']:.3g}, "
                f"cos {c['min_cosine']:.6f}, top-1 {c['top1_agreement']:.0%}; "
                f"random: max|diff| {r['max_abs_diff']:.2e} / {r['max_abs_logit']:.3g}, cos {r['min_cosine']:.6f}"
            )
        lines.append(f"  {a['file']:<40} {a['backend']:<12} {a['precision']:<5} {fig}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["bench"]:
            from .bench_cli import run_bench

            return run_bench(argv[1:])
        return run_export(argv)
    except (ValueError, OSError) as e:  # our error types subclass ValueError; OSError: paths, permissions
        message = str(e).strip().replace("\n", " ")
        print(f"stadapter-export: error: {message}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("stadapter-export: interrupted, no bundle written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
