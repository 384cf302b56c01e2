"""int8 on every x86 CPU: the ways to quantize B/16 12x384, their speed here and their accuracy on
this CPU and on an emulated AVX2 one (issue 17).

Stages; each reads and writes --work (default /tmp/bench_cpu_precision):

    python benchmarks/bench_cpu_precision.py prepare    # model, fp32 + int8 ONNX, clips, fp32 logits, layer inputs
    python benchmarks/bench_cpu_precision.py layers     # each weight MatMul alone: int8 error against fp32
    qemu-x86_64 -cpu Haswell .venv/bin/python benchmarks/bench_cpu_precision.py layers     # the same on AVX2
    python benchmarks/bench_cpu_precision.py prepare    # again: adds the option that keeps the 2 worst in float
    python benchmarks/bench_cpu_precision.py accuracy   # every option against fp32 (and under qemu, as above)
    python benchmarks/bench_cpu_precision.py speed --threads 2 --rounds 7   # interleaved, this CPU only
    python benchmarks/bench_cpu_precision.py report     # one markdown table from the JSON the stages wrote

Weights are random (no CLIP download): a random backbone, every adapter parameter drawn with std 0.05.
`prepare --bundle B --videos LIST` instead takes a trained bundle's fp32 ONNX and the videos of a
labelled list (e.g. the synthetic recipe's val.txt): accuracy then reports top-1 against fp32 and the labels.
Accuracy figures are ONNX Runtime int8 against ONNX Runtime fp32 on the machine that ran `prepare` (fp32
itself moved by 2e-7 of the largest logit between an AVX-512 CPU and qemu's Haswell, on the synthetic
model). QEMU emulates AVX2 but not AVX-512, and its timings mean nothing: speed is measured on this CPU only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stadapter_deploy import hardware
from stadapter_deploy.export.quantize import Int8Recipe, quantize_int8

PRECISE = "session.x64quantprecision"  # ONNX Runtime: U8U8 instead of U8S8 where the CPU has no VNNI


@dataclass(frozen=True)
class Option(Int8Recipe):
    """Int8Recipe with the choices this benchmark weighs and the exporter does not offer."""

    per_channel: bool = True
    weight_type: str = "s8"
    keep_float: tuple[str, ...] = ()


# name -> (recipe of the artifact, file, run with PRECISE)
OPTIONS = {
    "8-bit per channel (before)": (Option(weight_bits=8), "int8_w8.onnx", False),
    "8-bit + U8U8 at run time": (Option(weight_bits=8), "int8_w8.onnx", True),
    "7-bit per tensor": (Option(per_channel=False), "int8_w7_tensor.onnx", False),
    "7-bit per channel": (Option(), "int8_w7.onnx", False),
    "U8U8 (uint8 weights)": (Option(weight_bits=8, weight_type="u8"), "int8_u8.onnx", False),
    "static QDQ 8-bit": (Option(method="static", weight_bits=8), "int8_static_w8.onnx", False),
    "static QDQ 7-bit": (Option(method="static"), "int8_static_w7.onnx", False),
}
KEEP_FLOAT = "8-bit, 2 worst MatMuls in float"
KEEP_FLOAT_FILE = "int8_w8_keep2.onnx"


def machine_line() -> str:
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return f"{load}\nCPU kind {hardware.cpu_kind()}, flags: {' '.join(hardware.simd_flags())}"


def session(path: Path, threads: int | None = None, precise: bool = False):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    if precise:
        opts.add_session_config_entry(PRECISE, "1")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_clips(sess, clips: np.ndarray) -> np.ndarray:
    """Logits [N, C], one clip per call (the batch-1 case the targets are about)."""
    return np.concatenate([sess.run(None, {"clips": c[None]})[0] for c in clips])


def all_options(work: Path) -> dict:
    """OPTIONS, plus the keep-float option once `layers` has found the worst MatMuls on AVX2."""
    opts = dict(OPTIONS)
    if (work / "keep_float.json").exists():
        recipe = Option(weight_bits=8, keep_float=tuple(json.loads((work / "keep_float.json").read_text())))
        opts[KEEP_FLOAT] = (recipe, KEEP_FLOAT_FILE, False)
    return opts


def options_here(work: Path) -> dict:
    """The options whose artifact `prepare` wrote."""
    return {name: o for name, o in all_options(work).items() if (work / o[1]).exists()}


# ----------------------------------------------------------------------------- prepare (this machine)


def b16_model():
    import torch

    from stadapter_deploy import build_model
    from stadapter_deploy.model import STAdapter

    torch.manual_seed(0)
    model = build_model("vit_b16_adapter12x384", num_classes=400).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, STAdapter):  # a trained adapter is not the identity
                for p in module.parameters():
                    p.normal_(std=0.05)
    return model


def prepare_b16(work: Path, args) -> None:
    from stadapter_deploy.export.onnx_export import export_onnx
    from stadapter_deploy.export.parity import check_inputs
    from stadapter_deploy.preprocessing import Preprocessing

    pre = Preprocessing(size=224)
    if not (work / "fp32.onnx").exists():
        export_onnx(b16_model(), work / "fp32.onnx", num_frames=pre.num_frames)  # trimmed last block
    if not (work / "clips_random.npy").exists():
        checks = check_inputs(pre, args.decoded, args.random, seed=0)
        np.save(work / "clips_random.npy", checks.random)
        np.save(work / "clips_decoded.npy", checks.clips)
        np.save(work / "calibration.npy", check_inputs(pre, args.calib, 0, seed=100).clips)


def prepare_bundle(work: Path, bundle_path: Path, videos: Path) -> None:
    """A trained bundle's fp32 ONNX and its labelled videos, one view each, through the bundle's preprocessing."""
    from stadapter_deploy.runtime import load_bundle
    from stadapter_deploy.video import prepare_eval_views
    from stadapter_deploy.video.listfile import read_video_list

    bundle = load_bundle(bundle_path)
    shutil.copy(bundle.file(bundle.find("onnxruntime", "fp32")[0]), work / "fp32.onnx")
    if (work / "clips_val.npy").exists():
        return
    one_view = bundle.preprocessing.replace(spatial_views=1, temporal_views=1)
    entries = read_video_list(videos, videos.parent, bundle.config.num_classes)  # [(path, label)]
    clips = [prepare_eval_views(path, one_view).clips.numpy()[0] for path, _ in entries]
    np.save(work / "clips_val.npy", np.stack(clips))
    np.save(work / "labels_val.npy", np.array([label for _, label in entries]))
    np.save(work / "calibration.npy", np.stack(clips[: min(8, len(clips))]))


def prepare(args) -> None:
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    print(machine_line())
    if args.bundle:
        prepare_bundle(work, args.bundle, args.videos)
    else:
        prepare_b16(work, args)
    ref_sess = session(work / "fp32.onnx")
    for clips in sorted(work.glob("clips_*.npy")):
        ref = work / clips.name.replace("clips_", "fp32_")
        if not ref.exists():
            np.save(ref, run_clips(ref_sess, np.load(clips)))
    calibration = np.load(work / "calibration.npy")
    keep = work / "layers_avx2.json"
    if keep.exists() and not (work / "keep_float.json").exists():
        errors = json.loads(keep.read_text())["8-bit per channel (before)"]
        worst = sorted(errors, key=errors.get, reverse=True)[:2]
        (work / "keep_float.json").write_text(json.dumps(worst))
        print(f"kept in float (largest error alone on AVX2): {worst}")
    for name, (recipe, file, _) in all_options(work).items():
        if not (work / file).exists():
            info = quantize_int8(work / "fp32.onnx", work / file, calibration, recipe)
            print(f"{name}: {file}, {info['weights']}, {info['quantized']}")
    if not (work / "layers").exists():
        prepare_layers(work)


def prepare_layers(work: Path) -> None:
    """Each quantized weight MatMul alone: its input on one clip and a one-node fp32 model with its weight."""
    import onnx
    from onnx import helper, numpy_helper

    from stadapter_deploy.export.quantize import plan_matmuls
    from stadapter_deploy.export.quantize import prepare as ort_prepare

    folder = work / "layers"
    folder.mkdir()
    ort_prepare(work / "fp32.onnx", folder / "prepared.onnx", big=False)
    model = onnx.load(str(folder / "prepared.onnx"))
    names = plan_matmuls(folder / "prepared.onnx", quantize_adapters=False)["quantized"]
    nodes = [n for n in model.graph.node if n.name in names]
    weights = {t.name: t for t in model.graph.initializer}
    del model.graph.output[:]
    model.graph.output.extend(helper.make_tensor_value_info(n.input[0], onnx.TensorProto.FLOAT, None) for n in nodes)
    probe = folder / "probe.onnx"
    onnx.save(model, str(probe))
    clip = np.load(sorted(work.glob("clips_*.npy"))[0])[:1]  # clips_decoded / clips_random / clips_val
    inputs = session(probe).run(None, {"clips": clip})
    probe.unlink()
    for i, (node, x) in enumerate(zip(nodes, inputs, strict=True)):
        x = x.reshape(-1, x.shape[-1])  # [M, K]
        w = numpy_helper.to_array(weights[node.input[1]])  # [K, N]
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["y"], name=node.name)],
            "one",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(x.shape))],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [x.shape[0], w.shape[1]])],
            [numpy_helper.from_array(w, "w")],
        )
        one = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        onnx.save(one, str(folder / f"{i:02d}_fp32.onnx"))
        np.save(folder / f"{i:02d}_x.npy", x)
        np.save(folder / f"{i:02d}_y.npy", x @ w)
        for name in ("8-bit per channel (before)", "7-bit per channel"):
            _, file, _ = OPTIONS[name]
            quantize_int8(folder / f"{i:02d}_fp32.onnx", folder / f"{i:02d}_{file}", None, OPTIONS[name][0])
    (folder / "names.json").write_text(json.dumps([n.name for n in nodes]))


# ----------------------------------------------------------------------------- layers, accuracy (any CPU, qemu too)


def layers(args) -> None:
    """Relative L2 error of each weight MatMul alone (int8 against fp32 on its real input), per option."""
    folder = args.work / "layers"
    names = json.loads((folder / "names.json").read_text())
    kind = hardware.cpu_kind()
    print(machine_line())
    out = {}
    for option in ("8-bit per channel (before)", "8-bit + U8U8 at run time", "7-bit per channel"):
        _, file, precise = OPTIONS[option]
        errors = {}
        for i, name in enumerate(names):
            x, y = np.load(folder / f"{i:02d}_x.npy"), np.load(folder / f"{i:02d}_y.npy")
            got = session(folder / f"{i:02d}_{file}", args.threads, precise).run(None, {"x": x})[0]
            errors[name] = float(np.linalg.norm(got - y) / np.linalg.norm(y))
        out[option] = errors
        worst = sorted(errors, key=errors.get, reverse=True)[:3]
        print(
            f"{option}: median {np.median(list(errors.values())):.4f}; worst "
            + ", ".join(f"{n} {errors[n]:.4f}" for n in worst)
        )
    (args.work / f"layers_{kind}.json").write_text(json.dumps(out, indent=1) + "\n")


def accuracy(args) -> None:
    from stadapter_deploy.export.parity import compare

    work, kind = args.work, hardware.cpu_kind()
    print(machine_line())
    results = {}
    path = work / f"accuracy_{kind}.json"
    if path.exists():
        results = json.loads(path.read_text())
    for name, (_, file, precise) in options_here(work).items():
        if args.options and not any(w in name for w in args.options):
            continue
        sess = session(work / file, args.threads, precise)
        for clips_file in sorted(work.glob("clips_*.npy")):
            part = clips_file.stem.removeprefix("clips_")
            if args.sets and part not in args.sets:
                continue
            clips = np.load(clips_file)[: args.max_clips]
            ref = np.load(work / f"fp32_{part}.npy")[: len(clips)]
            out = run_clips(sess, clips)
            np.save(work / f"int8_{kind}_{file.removesuffix('.onnx')}_{precise:d}_{part}.npy", out)
            fig = compare(ref, out)
            if (work / f"labels_{part}.npy").exists():
                labels = np.load(work / f"labels_{part}.npy")[: len(clips)]
                fig["label_top1_fp32"] = float((ref.argmax(1) == labels).mean())
                fig["label_top1"] = float((out.argmax(1) == labels).mean())
            results.setdefault(name, {})[part] = fig
            print(
                f"{name} / {part} ({fig['n']} clips): cos min {fig['min_cosine']:.5f}, max-rel "
                f"{fig['rel_diff']:.4f}, top-1 vs fp32 {fig['top1_agreement']:.1%}",
                flush=True,
            )
            path.write_text(json.dumps(results, indent=1) + "\n")


# ----------------------------------------------------------------------------- speed (this CPU)


def speed(args) -> None:
    from stadapter_deploy.timing import interleaved_ms

    work = args.work
    clip = np.load(work / "clips_random.npy")[:1]
    sessions = {"ORT fp32": session(work / "fp32.onnx", args.threads)}
    for name, (_, file, precise) in options_here(work).items():
        if not args.options or any(w in name for w in args.options):
            sessions[name] = session(work / file, args.threads, precise)
    runs = {name: (lambda s=s: s.run(None, {"clips": clip})) for name, s in sessions.items()}
    print(machine_line())
    medians = interleaved_ms(runs, args.rounds)
    print(machine_line())
    base = medians["ORT fp32"]
    rows = {
        name: {
            "wall_ms": m.wall_ms,
            "cpu_ms": m.cpu_ms,
            "vs_fp32_wall": base.wall_ms / m.wall_ms,
            "vs_fp32_cpu": base.cpu_ms / m.cpu_ms,
            "rounds": m.runs,
        }
        for name, m in medians.items()
    }
    print(f"\n1 clip, {args.threads} threads, medians of {args.rounds} interleaved rounds")
    print("| variant | wall ms | vs ORT fp32 (wall) | CPU ms | vs ORT fp32 (CPU) |\n|---|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['wall_ms']:.0f} | {r['vs_fp32_wall']:.2f}x | {r['cpu_ms']:.0f} | {r['vs_fp32_cpu']:.2f}x |"
        )
    path = work / f"speed_{hardware.cpu_kind()}.json"
    runs_so_far = json.loads(path.read_text()) if path.exists() else []
    path.write_text(
        json.dumps(runs_so_far + [{"machine": machine_line(), "threads": args.threads, "rows": rows}], indent=1) + "\n"
    )


def report(args) -> None:
    """One markdown table: speed (median over speed runs) and accuracy per CPU kind, per option."""
    import statistics

    work = args.work
    acc = {p.stem.removeprefix("accuracy_"): json.loads(p.read_text()) for p in sorted(work.glob("accuracy_*.json"))}
    speeds = [run["rows"] for p in work.glob("speed_*.json") for run in json.loads(p.read_text())]
    kinds = list(acc)
    head = "| option | speed vs ORT fp32 |" + "".join(f" {k}: cos min / max-rel / top-1 |" for k in kinds)
    print(head + "\n|---|---:|" + "---|" * len(kinds))
    for name in options_here(work):
        ratios = [rows[name]["vs_fp32_wall"] for rows in speeds if name in rows]
        cells = [f"{statistics.median(ratios):.2f}x ({len(ratios)} runs)" if ratios else "-"]
        for k in kinds:
            parts = acc[k].get(name, {})
            cells.append(
                "; ".join(
                    f"{part} {f['min_cosine']:.4f} / {f['rel_diff']:.3f} / {f['top1_agreement']:.1%}"
                    + (f" (labels {f['label_top1']:.1%}, fp32 {f['label_top1_fp32']:.1%})" if "label_top1" in f else "")
                    for part, f in parts.items()
                )
                or "-"
            )
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\nint8 logits of one CPU kind against another's (max |diff| / max |logit|, same clips):")
    for name, (_, file, precise) in options_here(work).items():
        for part in ("random", "decoded", "val"):
            found = {k: work / f"int8_{k}_{file.removesuffix('.onnx')}_{precise:d}_{part}.npy" for k in kinds}
            logits = {k: np.load(f) for k, f in found.items() if f.exists()}
            if len(logits) == 2:
                a, b = logits.values()
                n = min(len(a), len(b))
                print(f"- {name} / {part}: {np.abs(a[:n] - b[:n]).max() / np.abs(a[:n]).max():.1e} ({n} clips)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["prepare", "layers", "accuracy", "speed", "report"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_cpu_precision"), help="files of every stage")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="ONNX Runtime intra-op threads")
    parser.add_argument("--rounds", type=int, default=7, help="speed: interleaved rounds (medians reported)")
    parser.add_argument("--options", nargs="*", help="accuracy/speed: only options whose name contains one of these")
    parser.add_argument("--max-clips", type=int, default=None, help="accuracy: at most this many clips per set")
    parser.add_argument("--sets", nargs="*", help="accuracy: only these clip sets (random, decoded, val)")
    parser.add_argument("--random", type=int, default=8, help="prepare: random clips")
    parser.add_argument("--decoded", type=int, default=4, help="prepare: decoded synthetic-video clips")
    parser.add_argument("--calib", type=int, default=8, help="prepare: decoded clips to calibrate static QDQ")
    parser.add_argument("--bundle", type=Path, help="prepare: a trained bundle instead of random B/16 weights")
    parser.add_argument("--videos", type=Path, help="prepare --bundle: a labelled video list ('path label' lines)")
    args = parser.parse_args()
    {"prepare": prepare, "layers": layers, "accuracy": accuracy, "speed": speed, "report": report}[args.stage](args)


if __name__ == "__main__":
    main()
