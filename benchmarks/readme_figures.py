"""The README's synthetic-training figures, from the README's own commands, with the machine they came from.

    python benchmarks/readme_figures.py OUT [--threads N]

Runs, in OUT, `python -m train synthetic --save-dir runs/synthetic` and `... --save-dir runs/synthetic-noad
--no-adapters` (the first generates the 600/120 clips of seed 0 into OUT/runs/synthetic-data unless they are
there), then prints a markdown table of each run's last epoch (val top-1, top-5, train loss), the sha256 of
its final weights and its wall time, with the data's sha256, the CPU's model and flags and the compute
threads. The runs start afresh each time; the data stays, so a second call with another --threads reads the
same files. Runs are bit-identical for the same data files, seed, thread count and CPU kind: `--threads N`
(OMP_NUM_THREADS) pins the count; by default torch takes one thread per core.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

RUNS = {
    "python -m train synthetic": ["synthetic", "--save-dir", "runs/synthetic"],
    "python -m train synthetic --no-adapters": ["synthetic", "--save-dir", "runs/synthetic-noad", "--no-adapters"],
}


def lscpu(field: str) -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith(field)), "?")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="working folder (the runs and the data go under OUT/runs)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: one per core)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if args.threads is not None:
        env["OMP_NUM_THREADS"] = str(args.threads)
    rows, threads = [], "?"
    for name, argv in RUNS.items():
        shutil.rmtree(args.out / argv[2], ignore_errors=True)  # a fresh run; the data stays
        start = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "train", *argv], cwd=args.out, env=env, capture_output=True, text=True
        )
        wall = time.monotonic() - start
        if proc.returncode != 0:
            print(proc.stdout[-2000:] + proc.stderr[-2000:], file=sys.stderr)
            return 1
        plan = next(line for line in proc.stdout.splitlines() if line.startswith("synthetic recipe"))
        threads = plan.rsplit("(", 1)[1].rstrip(")") if plan.endswith("threads)") else "?"
        save_dir = args.out / argv[2]
        last = json.loads((save_dir / "log.jsonl").read_text().splitlines()[-1])
        weights = hashlib.sha256((save_dir / "final" / "model.safetensors").read_bytes()).hexdigest()[:16]
        rows.append(
            f"| `{name}` | {last['val_acc1']:.2f} | {last['val_acc5']:.2f} | {last['train_loss']:.4f} | "
            f"{weights} | {wall:.0f} s |"
        )
    data = hashlib.sha256()
    for path in sorted((args.out / "runs" / "synthetic-data").rglob("*")):
        if path.is_file():
            data.update(path.name.encode() + hashlib.sha256(path.read_bytes()).digest())
    print(f"data: runs/synthetic-data, sha256 over its files {data.hexdigest()[:16]}")
    print(f"CPU: {lscpu('Model name')}, {os.cpu_count()} cores; torch compute threads: {threads}")
    print(f"CPU flags: {lscpu('Flags')}")
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}\n")
    print("| run | val top-1 | val top-5 | train loss | final weights sha256 | wall time (data included) |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
