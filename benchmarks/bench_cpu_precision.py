"""B/16 12x384 on this CPU, side by side: the trimmed last block vs the full one (torch and ONNX
Runtime fp32), torch bf16 autocast, and ONNX Runtime int8 (dynamic vs static QDQ), with accuracy
against fp32 and the GEMM probes (fp32 vs int8 at the MLP's shape).

    python benchmarks/bench_cpu_precision.py [--batch 1 8] [--repeats 5] [--threads 2] [--calib 8] [--eval 8]

Weights are random (no CLIP download), with non-zero adapters; accuracy is logits agreement with the
fp32 graph (relative L2 error, cosine, top-1 agreement) on random clips and on decoded synthetic
videos (held out from the static calibration set). Timings are interleaved (one call of each variant
per round) so load from other processes hits them alike; medians are reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from stadapter_deploy import build_model
from stadapter_deploy.export.bench import ort_matmul_gflops, torch_matmul_gflops
from stadapter_deploy.export.onnx_export import export_onnx
from stadapter_deploy.export.quantize import int8_gemm_gops, quantize_int8
from stadapter_deploy.model import STAdapter
from stadapter_deploy.video import load_eval_views
from stadapter_deploy.video.synthetic import write_motion_video

FRAMES, SIZE = 8, 224


def machine_line() -> str:
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    flags = sorted({f for f in open("/proc/cpuinfo").read().split() if f.startswith(("avx512", "amx")) or f == "avx2"})
    return f"{load}\nflags: {' '.join(flags)}"


def make_model(prototypes: np.ndarray) -> torch.nn.Module:
    """Random B/16 12x384 with non-identity adapters and a nearest-prototype head.

    Random CLIP weights map every clip to nearly the same feature, so a random head gives every clip
    the same class. Head row i is instead the centered feature of prototype clip i: the classes are
    then as close together as the clips are, a hard case for top-1 agreement.
    """
    torch.manual_seed(0)
    model = build_model("vit_b16_adapter12x384", num_classes=len(prototypes)).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, STAdapter):  # a trained adapter is not the identity
                module.conv.weight.normal_(std=0.3)
                module.conv.bias.normal_(std=0.02)
        feats = torch.cat([model.features(torch.from_numpy(c[None])) for c in prototypes])  # [P, D]
        center = feats.mean(0)  # [D]
        rows = (feats - center) / (feats - center).norm(dim=1, keepdim=True)  # [P, D]
        model.fc.weight.copy_(rows)
        model.fc.bias.copy_(-(rows @ center))  # logits = rows @ (feature - center)
    return model


def decoded_clips(folder: Path, seeds: range) -> np.ndarray:
    """[N, 3, T, 224, 224] clips decoded from synthetic motion videos, through the eval pipeline."""
    clips = []
    for seed in seeds:
        video = write_motion_video(folder / f"{seed}.mp4", label=seed % 6, seed=seed, size=(320, 240), num_frames=16)
        clips.append(load_eval_views(video, num_frames=FRAMES, size=SIZE)[0].numpy())
    return np.stack(clips)


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def torch_runner(model, trim: bool, bf16: bool = False):
    def run(clips: np.ndarray) -> np.ndarray:
        model.trim_last_block = trim
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model(torch.from_numpy(clips)).float().numpy()

    return run


def interleaved_ms(runners: dict, clips: np.ndarray, repeats: int) -> dict[str, tuple[float, float]]:
    """name -> (median wall ms, median process CPU ms). On a loaded machine the CPU time (at 1 thread:
    the work itself) moves less than the wall time, which includes waiting for a core."""
    for run in runners.values():
        run(clips)  # warm-up
    times = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            wall, cpu = time.perf_counter(), time.process_time()
            run(clips)
            times[name].append(((time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3))
    medians = {}
    for name, t in times.items():
        walls, cpus = zip(*t, strict=True)
        medians[name] = statistics.median(walls), statistics.median(cpus)
    return medians


def agreement(out: np.ndarray, ref: np.ndarray) -> str:
    rel = np.linalg.norm(out - ref, axis=1) / np.linalg.norm(ref, axis=1)
    cos = (out * ref).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)
    top1 = (out.argmax(1) == ref.argmax(1)).mean()
    return f"rel err median {np.median(rel):.4f} max {rel.max():.4f}, cos min {cos.min():.5f}, top-1 {top1:.0%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="*", default=[1], help="batch sizes to time (none: accuracy only)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--calib", type=int, default=8, help="decoded clips for static calibration")
    parser.add_argument("--eval", type=int, default=8, help="held-out decoded clips (and as many random ones)")
    parser.add_argument("--classes", type=int, default=12, help="head classes (one prototype clip each)")
    parser.add_argument("--reuse", action="store_true", help="reuse the ONNX files already in --work")
    parser.add_argument("--variants", nargs="*", help="time only variants whose name contains one of these")
    parser.add_argument("--no-accuracy", action="store_true", help="timings only")
    parser.add_argument("--work", type=Path, default=None, help="keep the ONNX files here (default: a temp dir)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_cpu_precision_"))
    work.mkdir(parents=True, exist_ok=True)
    print(machine_line())
    print(f"torch {torch.__version__}, {args.threads} threads\n")

    prototypes = decoded_clips(work, range(2000, 2000 + args.classes))
    model = make_model(prototypes)
    files = {trim: work / f"fp32_{'trimmed' if trim else 'full'}.onnx" for trim in (False, True)}
    calib = decoded_clips(work, range(args.calib))
    held_out = decoded_clips(work, range(1000, 1000 + args.eval))
    random = np.random.default_rng(0).standard_normal((args.eval, 3, FRAMES, SIZE, SIZE)).astype(np.float32)
    if args.reuse and all((work / f"int8_{m}.onnx").exists() for m in ("dynamic", "static")):
        print(f"reusing the ONNX files in {work} (the model is deterministic)")
    else:
        for trim in (False, True):
            model.trim_last_block = trim
            start = time.perf_counter()
            export_onnx(model, files[trim], num_frames=FRAMES)
            print(f"export fp32 trim={trim}: {time.perf_counter() - start:.0f} s")
        for method in ("dynamic", "static"):
            start = time.perf_counter()
            info = quantize_int8(files[True], work / f"int8_{method}.onnx", calib, method)
            print(f"quantize {method}: {time.perf_counter() - start:.0f} s, {info}")

    sessions = {
        "ORT fp32 full": ort_session(files[False], args.threads),
        "ORT fp32 trimmed": ort_session(files[True], args.threads),
        "ORT int8 dynamic": ort_session(work / "int8_dynamic.onnx", args.threads),
        "ORT int8 static": ort_session(work / "int8_static.onnx", args.threads),
    }
    runners = {name: (lambda c, s=s: s.run(None, {"clips": c})[0]) for name, s in sessions.items()}
    runners |= {
        "torch fp32 full": torch_runner(model, False),
        "torch fp32 trimmed": torch_runner(model, True),
        "torch bf16 trimmed": torch_runner(model, True, bf16=True),
    }

    if args.variants:
        runners = {k: v for k, v in runners.items() if k.endswith("fp32 full") or any(w in k for w in args.variants)}
    print("\n## accuracy against fp32 (per clip)")
    for label, clips in (("decoded", held_out), ("random", random)) if not args.no_accuracy else ():
        ref = np.concatenate([runners["ORT fp32 full"](c[None]) for c in clips])
        print(f"{label} clips: {len(clips)}, distinct fp32 top-1 classes: {len(set(ref.argmax(1)))}")
        for name, run in runners.items():
            if name != "ORT fp32 full":
                out = np.concatenate([run(c[None]) for c in clips])
                print(f"- {name}: {agreement(out, ref)}")

    for batch in args.batch:
        clips = np.concatenate([held_out, random])[:batch]
        print(f"\n## batch {batch}, median of {args.repeats} interleaved rounds\n{machine_line()}")
        ms = interleaved_ms(runners, clips, args.repeats)
        print("| variant | wall ms | vs its fp32 full | CPU ms | vs its fp32 full |\n|---|---|---|---|---|")
        for name, (wall, cpu) in ms.items():
            base_wall, base_cpu = ms["torch fp32 full" if name.startswith("torch") else "ORT fp32 full"]
            print(f"| {name} | {wall:.0f} | {wall / base_wall:.3f} | {cpu:.0f} | {cpu / base_cpu:.3f} |")

    print(f"\n## GEMM probes, {args.threads} threads, (M, K, N) = (1576, 768, 3072)\n{machine_line()}")
    print(f"torch fp32 mm: {torch_matmul_gflops(args.threads, seconds=2):.0f} GFLOP/s")
    print(f"ORT fp32 MatMul: {ort_matmul_gflops(args.threads, seconds=2):.0f} GFLOP/s")
    print(f"ORT int8 DynamicQuantizeMatMul: {int8_gemm_gops(args.threads, seconds=2):.0f} GOP/s")


if __name__ == "__main__":
    main()
