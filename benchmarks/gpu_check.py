"""The first command to run on a GPU machine: GPU tests, torch-cuda parity, fp16 throughput.

    python benchmarks/gpu_check.py OUT_DIR          # at most --budget-s (340 s) on one H100 / H200
    python benchmarks/gpu_check.py OUT_DIR --device cpu --tiny --tests tests/test_model.py \
        --compile-backend eager                     # self-test of every CPU-runnable path (tests/test_gpu_check.py)

In order, each in its own process with its own time budget (a step over budget is killed; what it
measured so far is kept):
  1. tests       `pytest -m "gpu or tensorrt"` (the GPU tests; the TensorRT ones say why they skip)
  2. parity      ViT-B/16 12x384 with random weights (adapters drawn with std 0.05; nothing is
                 downloaded): torch-cuda fp32 (TF32 off), fp16 and bf16 autocast, each against torch fp32
                 on the CPU, through the export's own parity gate (decoded motion clips when PyAV is
                 there, plus random clips)
  3. eager       fp16 clips/s at batch 1, 8, 32, 64 (8x224x224 clips already on the GPU), and an fp16
                 matmul probe: what this GPU's GEMMs reach
  4. cuda_graph  the same forward captured once per batch in a CUDA graph (no launch overhead)
  5. compile     torch.compile (dynamic batch; one compile), then the compiled forward in a CUDA graph
Each throughput row gives its share of the GPU's dense fp16 tensor peak (DENSE_FP16_PEAKS, from
NVIDIA's datasheets) from the FLOPs per clip (stadapter_deploy.export.bench.model_gflops: 303 GFLOP).
TensorRT and onnxruntime-gpu are skipped, with the reason, when they are not installed. Writes
OUT_DIR/gpu_check.json and OUT_DIR/gpu_check.md; exits 1 when a step fails or runs out of time, 2
without a GPU.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # everything from the working tree, installed or not

import torch  # noqa: E402

STEPS = {"tests": 100, "parity": 60, "eager": 45, "cuda_graph": 45, "compile": 120}  # seconds each, at most
RESERVE_S = 8  # kept back for writing the results
# Dense (no sparsity) fp16 tensor-core TFLOPS by GPU name, first match wins (so H100 NVL before H100,
# L40S before L40 before L4, A100 and A10G before A10). Datasheets give the 2:4-sparse figure first;
# dense is half of it.
DENSE_FP16_PEAKS = [
    ("H200 NVL", 835.5, "NVIDIA H200 datasheet: 1,671 TFLOPS FP16 Tensor Core with sparsity, halved"),
    ("H200", 989.5, "NVIDIA H200 datasheet (SXM): 1,979 TFLOPS with sparsity, halved"),
    ("H100 NVL", 835.5, "NVIDIA H100 datasheet (NVL): 1,671 TFLOPS with sparsity, halved"),
    ("H100 PCIe", 756.5, "NVIDIA H100 datasheet (PCIe): 1,513 TFLOPS with sparsity, halved"),
    ("H100", 989.5, "NVIDIA H100 datasheet (SXM, e.g. 'H100 80GB HBM3'): 1,979 TFLOPS with sparsity, halved"),
    ("A100", 312.0, "NVIDIA A100 datasheet (SXM and PCIe): 312 TFLOPS dense, 624 with sparsity"),
    ("L40S", 362.05, "NVIDIA L40S datasheet: 362.05 TFLOPS dense, 733 with sparsity"),
    ("L40", 181.05, "NVIDIA L40 datasheet: 181.05 TFLOPS dense, 362.1 with sparsity"),
    ("L4", 121.0, "NVIDIA L4 datasheet: 242 TFLOPS with sparsity, halved"),
    ("A10G", None, "no NVIDIA datasheet figure for the A10G; pass --peak-tflops"),
    ("A10", 125.0, "NVIDIA A10 datasheet: 125 TFLOPS dense, 250 with sparsity"),
    ("T4", 65.0, "NVIDIA T4 datasheet: 65 TFLOPS FP16 mixed precision"),
    ("V100-PCIE", 112.0, "NVIDIA V100 datasheet (PCIe): 112 TFLOPS tensor"),
    ("V100", 125.0, "NVIDIA V100 datasheet (SXM2): 125 TFLOPS tensor"),
    ("B200", 2250.0, "NVIDIA HGX B200: 4.5 PFLOPS FP16/BF16 Tensor Core per GPU with sparsity, halved"),
]


@dataclasses.dataclass
class Settings:
    """What one run measures (--tiny swaps in the tiny preset at 32x32 and small batches)."""

    device: str = "cuda"
    preset: str = "vit_b16_adapter12x384"
    num_classes: int = 400
    frames: int = 8
    batches: tuple[int, ...] = (1, 8, 32, 64)
    seconds_per_row: float = 1.5
    matmul_size: int = 8192
    compile_backend: str = "inductor"

    @property
    def dtype(self) -> torch.dtype:
        """fp16 on the GPU; the CPU self-test runs the same paths in fp32 (CPU fp16 kernels are very slow)."""
        return torch.float16 if self.device == "cuda" else torch.float32

    @classmethod
    def from_args(cls, args) -> Settings:
        s = cls(device=args.device, compile_backend=args.compile_backend)
        if args.tiny:
            s = dataclasses.replace(s, preset="tiny", num_classes=6, batches=(1, 2), seconds_per_row=0.2)
            s.matmul_size = 256
        return s


def log(message: str) -> None:
    print(f"[gpu_check] {message}", flush=True)


# ----------------------------------------------------------------------------- the model and timing


def random_model(s: Settings) -> torch.nn.Module:
    """The preset with random weights; adapters drawn with std 0.05 so they change the output."""
    from stadapter_deploy import build_model

    torch.manual_seed(0)
    model = build_model(s.preset, num_classes=s.num_classes).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".adapter_pre_" in name:
                p.normal_(std=0.05)
    return model


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_batch_ms(run, device: str, seconds: float) -> tuple[float, int]:
    """(median ms per call, calls timed): enough calls to fill about `seconds`, at least 5."""
    from stadapter_deploy.timing import median_ms

    call = lambda: (run(), synchronize(device))
    call()
    start = time.perf_counter()
    call()
    once = time.perf_counter() - start
    runs = int(min(200, max(5, seconds / max(once, 1e-6))))
    return median_ms(call, runs, warmup=1), runs


def peak_for(gpu: str, override: float | None) -> dict:
    if override:
        return {"tflops": override, "source": "--peak-tflops"}
    for pattern, tflops, source in DENSE_FP16_PEAKS:
        if pattern.lower() in gpu.lower():
            return {"tflops": tflops, "source": source}
    return {"tflops": None, "source": f"{gpu!r} is not in DENSE_FP16_PEAKS; pass --peak-tflops"}


# ----------------------------------------------------------------------------- steps (child processes)


def step_parity(s: Settings, emit) -> None:
    import numpy as np

    from stadapter_deploy.export.parity import CheckInputs, check_artifact, check_inputs, reference_outputs
    from stadapter_deploy.preprocessing import Preprocessing
    from stadapter_deploy.runtime.runner import Outputs

    model = random_model(s)
    pre = Preprocessing(num_frames=s.frames, size=model.cfg.image_size)
    try:
        inputs = check_inputs(pre, num_videos=2, num_random=2)
    except Exception as e:  # no PyAV or no encoder here: random clips only, and say so
        emit({"note": f"decoded check clips skipped ({type(e).__name__}: {e}); random clips only"})
        random = torch.randn((4, *pre.clip_shape), generator=torch.Generator().manual_seed(0)).numpy()
        inputs = CheckInputs(clips=np.zeros((0, *pre.clip_shape), np.float32), random=random)
    log(f"parity: fp32 reference on the CPU for {len(inputs.clips) + len(inputs.random)} clips")
    reference = reference_outputs(copy.deepcopy(model), inputs)
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 row measures fp32, not TF32
    torch.backends.cudnn.allow_tf32 = False
    variants = {  # as the torch runner runs them (runtime/runners/torch_runner.py)
        "fp32": (copy.deepcopy(model).to(s.device), None, "fp32"),
        "fp16": (copy.deepcopy(model).half().to(s.device), None, "fp16"),  # LayerNorm still computes in fp32
        "bf16 autocast": (copy.deepcopy(model).to(s.device), torch.bfloat16, "fp16"),  # held to the half gate
    }
    for name, (net, autocast, gate) in variants.items():

        def run(clips, net=net, autocast=autocast):
            logits, features = [np.zeros((0, s.num_classes), np.float32)], [np.zeros((0, net.cfg.width), np.float32)]
            with torch.inference_mode(), torch.autocast(s.device, dtype=autocast, enabled=autocast is not None):
                for i in range(0, len(clips), 4):
                    pooled = net.features(torch.from_numpy(clips[i : i + 4]).to(s.device))  # [n, D]
                    logits.append(net.head(pooled).float().cpu().numpy())
                    features.append(pooled.float().cpu().numpy())
            return Outputs(np.concatenate(logits), np.concatenate(features))  # the logits and what the head read

        figures = check_artifact(run, reference, inputs, gate)
        emit({"variant": name, "gate": gate, **figures})
        log(f"parity: {name}: {'passed' if figures['passed'] else 'FAILED ' + '; '.join(figures['failures'])}")


def throughput_rows(s: Settings, model, variant: str, make_run, emit, batches) -> None:
    """Time make_run(x) for each batch; one row per batch, emitted as soon as it is measured."""
    from stadapter_deploy.export.bench import model_gflops

    cfg = model.cfg
    gflop = model_gflops(cfg, s.frames)
    for batch in batches:
        x = torch.randn(batch, 3, s.frames, cfg.image_size, cfg.image_size, device=s.device, dtype=s.dtype)
        if s.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        run = make_run(x)
        ms, runs = time_batch_ms(run, s.device, s.seconds_per_row)
        clips_per_s = batch / ms * 1e3
        row = {"variant": variant, "batch": batch, "ms": ms, "runs": runs, "clips_per_s": clips_per_s}
        row |= {"tflops": clips_per_s * gflop / 1e3, "setup_s": time.perf_counter() - start - ms * runs / 1e3}
        if s.device == "cuda":
            row["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
        emit(row)
        log(f"{variant}: batch {batch}: {clips_per_s:.1f} clips/s ({ms:.2f} ms)")


def half_model(s: Settings) -> torch.nn.Module:
    """fp16 weights as the torch runner holds them (LayerNorm computes in fp32 inside, model/vit.py), with
    the adapters' temporal conv in the model's default form (Conv3d), as torch-cuda runs it."""
    return random_model(s).to(device=s.device, dtype=s.dtype)


def matmul_probe(s: Settings) -> dict:
    """An n x n x n GEMM: what this GPU's fp16 matmuls reach (the CPU self-test uses fp32)."""
    n = s.matmul_size
    a = torch.randn(n, n, device=s.device, dtype=s.dtype)
    b = torch.randn(n, n, device=s.device, dtype=s.dtype)
    ms, runs = time_batch_ms(lambda: torch.mm(a, b), s.device, s.seconds_per_row)
    return {"variant": f"{str(s.dtype)[6:]} matmul {n}x{n}x{n}", "ms": ms, "runs": runs, "tflops": 2 * n**3 / ms / 1e9}


def step_eager(s: Settings, emit) -> None:
    probe = matmul_probe(s)
    emit(probe)
    log(f"matmul probe: {probe['tflops']:.3g} TFLOPS")
    model = half_model(s)
    for name, form in (("eager", "conv3d"), ("eager, shift form (as exported)", "shift")):
        with torch.inference_mode(), model.temporal_conv(form):
            throughput_rows(s, model, name, lambda x: lambda: model(x), emit, s.batches)


def graphed(fn, x: torch.Tensor):
    """fn(x) captured in a CUDA graph on a static x; returns the replay (NVIDIA's warm-up-then-capture recipe)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn(x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(x)  # lives in the graph's memory pool; kept alive with the replay below
    return lambda: (graph.replay(), out)


def step_cuda_graph(s: Settings, emit) -> None:
    model = half_model(s)
    with torch.no_grad():
        throughput_rows(s, model, "CUDA graph", lambda x: graphed(model, x), emit, s.batches)


def step_compile(s: Settings, emit) -> None:
    model = half_model(s)
    compiled = torch.compile(model, dynamic=True, backend=s.compile_backend)
    variants = {"torch.compile": lambda x: lambda: compiled(x)}
    if s.device == "cuda":
        variants["torch.compile + CUDA graph"] = lambda x: graphed(compiled, x)
    log(f"compile: torch.compile(backend={s.compile_backend!r}, dynamic=True); the first call compiles")
    with torch.no_grad():
        for batch in sorted(s.batches, reverse=True):  # batch 1 last: size-1 dims compile once more
            for variant, make_run in variants.items():
                throughput_rows(s, model, variant, make_run, emit, [batch])


STEP_FUNCTIONS = {"parity": step_parity, "eager": step_eager, "cuda_graph": step_cuda_graph, "compile": step_compile}


def run_step(args) -> int:
    """Child process: run one step, appending each result as a JSON line to args.rows."""
    s = Settings.from_args(args)

    def emit(row: dict) -> None:
        with open(args.rows, "a") as f:
            f.write(json.dumps({"step": args.step, **row}) + "\n")

    STEP_FUNCTIONS[args.step](s, emit)
    return 0


# ----------------------------------------------------------------------------- the parent


def machine() -> dict:
    from stadapter_deploy.export.bench import machine_info
    from stadapter_deploy.hardware import cpu_flags

    info = machine_info(torch.get_num_threads())
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    info.setdefault("cpu_flags", [f for f in wanted if f in cpu_flags()])
    info["cuda"] = torch.version.cuda
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info |= {"gpu_memory_gb": round(p.total_memory / 2**30, 1), "capability": f"{p.major}.{p.minor}"}
        info |= {"sms": p.multi_processor_count}
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,power.limit", "--format=csv,noheader"]
        try:
            info["nvidia_smi"] = subprocess.run(query, capture_output=True, text=True, timeout=15).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            pass
    info["triton"] = importlib.util.find_spec("triton") is not None
    return info


def skipped_backends() -> dict:
    """The backends this machine cannot run, and why (the GPU machine has neither of these)."""
    from stadapter_deploy.runtime.runners.trt_runner import tensorrt_missing

    out = {}
    if missing := tensorrt_missing():
        out["tensorrt"] = missing
    if importlib.util.find_spec("onnxruntime") is None:
        out["onnxruntime-cuda"] = "onnxruntime-gpu is not installed"
    else:
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            out["onnxruntime-cuda"] = "onnxruntime has no CUDAExecutionProvider here (onnxruntime-gpu is not installed)"
    return out


def gpu_test_files() -> list[str]:
    """The test files that hold GPU or TensorRT tests: collecting only these keeps the step short, and a
    machine without the service's packages (bentoml, gradio) still collects them."""
    marked = lambda text: "pytest.mark.gpu" in text or "pytest.mark.tensorrt" in text
    return [str(p.relative_to(ROOT)) for p in sorted((ROOT / "tests").glob("test_*.py")) if marked(p.read_text())]


def run_tests(args, timeout: float) -> dict:
    if importlib.util.find_spec("pytest") is None:
        return {"status": "skipped", "reason": "pytest is not installed (pip install pytest)"}
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu or tensorrt", "-q", "-rs", "-p", "no:cacheprovider"]
    cmd += ["--continue-on-collection-errors", *(args.tests or gpu_test_files())]
    log(f"tests: {' '.join(cmd[2:])}")
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout or ""
        return {"status": "timed out", "reason": f"after {timeout:.0f} s", "tail": out.splitlines()[-15:]}
    lines = proc.stdout.splitlines()
    counts = re.compile(r"\d+ (passed|failed|skipped|deselected|errors?)\b")
    summary = next((line.strip("= ") for line in reversed(lines) if counts.search(line)), "")
    status = "ok" if proc.returncode in (0, 5) else "failed"  # 5: no test selected
    log(f"tests: {summary or f'exit code {proc.returncode}'}")
    return {"status": status, "exit_code": proc.returncode, "summary": summary, "tail": lines[-25:]}


def run_child(args, step: str, timeout: float, rows_file: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), str(args.out), "--step", step, "--rows", str(rows_file)]
    cmd += ["--device", args.device, "--compile-backend", args.compile_backend] + ["--tiny"] * args.tiny
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timed out", "reason": f"killed after its {timeout:.0f} s budget; rows measured so far kept"}
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-12:]
        return {"status": "failed", "exit_code": proc.returncode, "reason": tail[-1] if tail else "", "tail": tail}
    return {"status": "ok"}


def guarded(fn, fallback):
    """fn(), or `fallback` plus the error when the project cannot be imported here (a missing package)."""
    try:
        return fn()
    except Exception as e:
        log(f"{fn.__name__}: {type(e).__name__}: {e}")
        return {**fallback, "error": f"{type(e).__name__}: {e}"}


def markdown(report: dict) -> str:
    m, peak = report["machine"], report["peak"]
    gpu = m.get("gpu") or "no GPU"
    lines = [f"## GPU check: {gpu}", "", f"`{report['command']}`, {report['date']}", ""]
    lines.append(
        f"torch {m['torch']} (CUDA {m.get('cuda')}), {m.get('gpu_memory_gb', '?')} GB, capability "
        f"{m.get('capability', '?')}; CPU {m['cpu']} ({', '.join(m['cpu_flags']) or 'no AVX2'}); "
        f"dense fp16 peak {peak['tflops'] or '?'} TFLOPS ({peak['source']})"
    )
    lines += ["", "| step | status | note |", "|---|---|---|"]
    for step in report["steps"]:
        note = step.get("summary") or step.get("reason") or ""
        lines.append(f"| {step['step']} | {step['status']} | {note} |")
    for name, why in report["skipped_backends"].items():
        lines.append(f"| backend {name} | skipped | {why} |")
    parity = [r for r in report["rows"] if r["step"] == "parity" and "variant" in r]
    if parity:
        lines += ["", "| precision (torch-cuda) | vs torch fp32 CPU | clips: max rel diff, min cos, top-1 |"]
        lines += ["| --- | --- | --- |"]
        for r in parity:
            parts = []
            for part in ("clips", "random"):
                f = r[part]
                if f["n"]:
                    parts.append(
                        f"{part} ({f['n']}): {f['rel_diff']:.2e}, {f['min_cosine']:.6f}, {f['top1_agreement']:.0%}"
                    )
            gate = "passed" if r["passed"] else "FAILED: " + "; ".join(r["failures"])
            lines.append(f"| {r['variant']} | {gate} ({r['gate']} gate) | {'; '.join(parts)} |")
    speed = [r for r in report["rows"] if "clips_per_s" in r]
    if speed:
        dtype = "fp16" if m.get("gpu") else "fp32 (CPU self-test)"
        head = "| batch | clips/s | ms per batch | TFLOPS | share of dense fp16 peak | setup s (compile, capture) |"
        lines += ["", f"| {dtype} forward {head}", "|---|---|---|---|---|---|---|"]
        for r in speed:
            share = f"{r['tflops'] / peak['tflops']:.1%}" if peak["tflops"] else "?"
            figures = f"{r['clips_per_s']:.1f} | {r['ms']:.2f} | {r['tflops']:.3g}"
            lines.append(f"| {r['variant']} | {r['batch']} | {figures} | {share} | {r['setup_s']:.1f} |")
    probes = [r for r in report["rows"] if "matmul" in r.get("variant", "")]
    for r in probes:
        share = f", {r['tflops'] / peak['tflops']:.0%} of the peak" if peak["tflops"] else ""
        lines += ["", f"Matmul probe ({r['variant']}): {r['tflops']:.3g} TFLOPS{share}."]
    notes = [r["note"] for r in report["rows"] if "note" in r]
    lines += [""] + [f"Note: {n}" for n in notes] if notes else []
    return "\n".join(lines) + "\n"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="folder for gpu_check.json and gpu_check.md (created)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: the self-test (with --tiny)")
    p.add_argument("--tiny", action="store_true", help="tiny preset at 32x32, batches 1 and 2: the self-test")
    p.add_argument("--budget-s", type=float, default=340, help="whole run's time limit in seconds (default 340)")
    p.add_argument(
        "--tests",
        nargs="*",
        help="what `pytest -m 'gpu or tensorrt'` collects (default: the test files with such tests)",
    )
    p.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend (default inductor; eager for the self-test)",
    )
    p.add_argument("--peak-tflops", type=float, default=None, help="dense fp16 peak, for a GPU the table lacks")
    p.add_argument("--step", choices=list(STEP_FUNCTIONS), help=argparse.SUPPRESS)  # a child process
    p.add_argument("--rows", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.step:
        return run_step(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "gpu_check: needs an NVIDIA GPU with CUDA, and torch sees none here "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); run it on the GPU machine",
            file=sys.stderr,
        )
        return 2
    deadline = time.monotonic() + args.budget_s
    args.out.mkdir(parents=True, exist_ok=True)
    rows_file = args.out / "gpu_check.rows.jsonl"
    rows_file.unlink(missing_ok=True)
    report = {"command": shlex.join(["python", *sys.argv]), "date": time.strftime("%Y-%m-%d %H:%M %Z")}
    report |= {"machine": guarded(machine, {}), "skipped_backends": guarded(skipped_backends, {}), "steps": []}
    report["peak"] = peak_for(report["machine"].get("gpu") or "", args.peak_tflops)
    log(f"{report['machine'].get('gpu') or 'CPU self-test'}; budget {args.budget_s:.0f} s")
    for name, why in report["skipped_backends"].items():
        log(f"backend {name}: skipped: {why}")
    for step, budget in STEPS.items():
        left = deadline - time.monotonic() - RESERVE_S
        if step == "cuda_graph" and args.device != "cuda":
            result = {"status": "skipped", "reason": "CUDA graphs need CUDA"}
        elif left < 5:
            result = {"status": "skipped", "reason": "out of time"}
        else:
            timeout = min(budget, left)
            log(f"{step}: up to {timeout:.0f} s")
            start = time.monotonic()
            result = run_tests(args, timeout) if step == "tests" else run_child(args, step, timeout, rows_file)
            result["seconds"] = round(time.monotonic() - start, 1)
        log(f"{step}: {result['status']}" + (f" ({result['reason']})" if result.get("reason") else ""))
        report["steps"].append({"step": step, **result})
    report["rows"] = [json.loads(line) for line in rows_file.read_text().splitlines()] if rows_file.exists() else []
    rows_file.unlink(missing_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "gpu_check.md").write_text(markdown(report))
    log(f"wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}")
    failed = [s["step"] for s in report["steps"] if s["status"] in ("failed", "timed out")]
    failed += [f"parity {r['variant']}" for r in report["rows"] if r["step"] == "parity" and r.get("passed") is False]
    if failed:
        log(f"not all good: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
