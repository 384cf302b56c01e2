"""Load test of the BentoML service against the same model in-process, in one run.

    python benchmarks/load_test.py --bundle BUNDLE [--requests 500] [--low-requests 100] [--views N]

Starts `bentoml serve` on a free loopback port with BUNDLE, makes a 10 s 640x360 video, then:
1. warm-up, server RSS (the server and all its worker processes);
2. 1 client, each request paired with `Predictor.classify` of the same video in this process (same
   backend), so the service overhead is measured under the same machine load;
3. 4 and 16 concurrent clients (async httpx): p50/p95/p99 latency, throughput, errors, and the
   batch sizes the server formed (from /metrics);
4. server RSS again; raw `Predictor.predict` throughput at the batch size formed with 16 clients.
Prints a markdown table and the target checks; --json writes every figure.

    python benchmarks/load_test.py --bundle BUNDLE --faults [--low-requests 30]

instead measures good-request latency beside two decode bombs in flight, then kill -9 of the decode
workers and of the model worker under 4 clients (answers by status, time to the first 200 after).

    python benchmarks/load_test.py --bundle BUNDLE --task [--low-requests 30] [--task-minutes 20]

instead measures a good /classify request's latency alone, then while one long /timeline_task runs
(its own decode pool), alternating in rounds; the p50 ratio should stay within 2x.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

from serve.local import ServerFailed, start_server, stop_server, wait_ready
from stadapter_deploy.timing import time_ms


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


# ----------------------------------------------------------------------------- the server


def server_rss_mb(process: subprocess.Popen) -> float:
    """Resident memory of the server and all its descendants (services, decode processes)."""
    family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    total = 0
    for p in family:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def batch_counters(url: str) -> dict[str, float]:
    """Model calls, clips and requests batched so far (summed over label sets)."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    out = {}
    for key, name in [
        ("calls", "stadapter_model_batch_clips_count"),
        ("clips", "stadapter_model_batch_clips_sum"),
        ("requests", "bentoml_service_adaptive_batch_size_sum"),
    ]:
        values = [float(m.group(1)) for m in re.finditer(rf"^{name}(?:\{{[^}}]*\}})?\s+(\S+)$", text, re.M)]
        out[key] = sum(values)
    return out


# ----------------------------------------------------------------------------- load


async def run_level(url: str, video: bytes, clients: int, requests: int, fields: dict) -> dict:
    latencies, errors, done = [], [], 0

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal done
        while done < requests:
            done += 1
            start = time.perf_counter()
            try:
                files = {"video": ("load.mp4", video, "video/mp4")}
                r = await client.post(f"{url}/classify", files=files, data=fields)
                ok = r.status_code == 200
                if not ok:
                    errors.append(f"{r.status_code}: {r.text[:200]}")
            except httpx.HTTPError as e:
                ok = False
                errors.append(repr(e))
            if ok:
                latencies.append((time.perf_counter() - start) * 1e3)

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(timeout=3600, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        wall = time.perf_counter() - start
    return summarize(clients, requests, latencies, errors, wall)


def summarize(clients: int, requests: int, latencies: list[float], errors: list[str], wall: float) -> dict:
    """One load level's row: latency percentiles, throughput and errors."""
    return {
        "clients": clients,
        "requests": requests,
        "errors": len(errors),
        "error_samples": errors[:3],
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
        "throughput_rps": len(latencies) / wall if wall else 0.0,
        "wall_s": wall,
    }


def paired_level(url: str, video: bytes, video_path: Path, predictor, requests: int, views) -> tuple[dict, list]:
    """One client, each request followed by the same classify in this process, so that both see the
    same machine load. Also the part of each request's latency the server did not spend in its own
    decode/preprocess/infer timings (HTTP, upload, parsing, hand-offs)."""
    fields = {} if views is None else {"views": str(views)}
    latencies, baseline, outside, errors = [], [], [], []
    with httpx.Client(timeout=3600) as client:
        for _ in range(requests):
            start = time.perf_counter()
            r = client.post(f"{url}/classify", files={"video": ("load.mp4", video, "video/mp4")}, data=fields)
            elapsed = (time.perf_counter() - start) * 1e3
            if r.status_code != 200:
                errors.append(f"{r.status_code}: {r.text[:200]}")
            else:
                latencies.append(elapsed)
                t = r.json()["timings_ms"]
                outside.append(elapsed - t["decode"] - t["preprocess"] - t["infer"])
            start = time.perf_counter()
            predictor.classify(video_path, views=views)
            baseline.append((time.perf_counter() - start) * 1e3)
    wall = sum(latencies) / 1e3
    level = summarize(1, requests, latencies, errors, wall)
    level["outside_server_timings_p50_ms"] = percentile(outside, 50)
    return level, baseline


def make_video(folder: Path) -> Path:
    from stadapter_deploy.video.synthetic import write_motion_video

    return write_motion_video(folder / "load.mp4", label=0, seed=0, size=(640, 360), num_frames=300, fps=30)


# ----------------------------------------------------------------------------- fault runs


def make_bomb(folder: Path) -> bytes:
    """A tiny H.264 file that declares two 8000x8000 frames (189 KB; about 4 GB to decode unchecked)."""
    path = folder / "bomb.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "color=black:size=8000x8000:rate=1"]
        + ["-frames:v", "2", "-c:v", "libx264", "-preset", "ultrafast", str(path)],
        check=True,
    )
    return path.read_bytes()


def good_latencies(url: str, video: bytes, requests: int) -> tuple[list[float], list[int]]:
    latencies, codes = [], []
    with httpx.Client(timeout=600) as client:
        for _ in range(requests):
            start = time.perf_counter()
            r = client.post(f"{url}/classify", files={"video": ("good.mp4", video, "video/mp4")})
            latencies.append((time.perf_counter() - start) * 1e3)
            codes.append(r.status_code)
    return latencies, codes


def bomb_run(url: str, video: bytes, bomb: bytes, requests: int) -> dict:
    """Good-request latency alone, then with two clients sending bombs the whole time."""
    alone, _ = good_latencies(url, video, requests)
    stop, bomb_codes = threading.Event(), []

    def bomber() -> None:
        with httpx.Client(timeout=600) as client:
            while not stop.is_set():
                r = client.post(f"{url}/classify", files={"video": ("bomb.mp4", bomb, "video/mp4")})
                bomb_codes.append(r.status_code)

    threads = [threading.Thread(target=bomber) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        beside, codes = good_latencies(url, video, requests)
    finally:
        stop.set()
        for t in threads:
            t.join()
    p50_alone, p50_beside = statistics.median(alone), statistics.median(beside)
    return {
        "good_p50_ms_alone": p50_alone,
        "good_p50_ms_beside_two_bombs": p50_beside,
        "ratio": p50_beside / p50_alone,
        "good_errors": sum(c != 200 for c in codes),
        "bombs_sent": len(bomb_codes),
        "bomb_statuses": sorted(set(bomb_codes)),
    }


def kill_run(url: str, process, video: bytes, kind: str, clients: int = 4, seconds: float = 40.0) -> dict:
    """`clients` clients for `seconds`; a few seconds in, kill -9 every worker of `kind` ("decode" or
    "model"). Reports the answers by status and how long after the kill the first 200 came back."""
    marker = {"decode": "multiprocessing.forkserver", "model": "--service-name stadapter_model"}[kind]
    statuses: dict[int, int] = {}
    ok_times: list[float] = []
    stop = threading.Event()

    def client_loop() -> None:
        with httpx.Client(timeout=600) as client:
            while not stop.is_set():
                try:
                    code = client.post(f"{url}/classify", files={"video": ("k.mp4", video, "video/mp4")}).status_code
                except httpx.HTTPError:
                    code = -1  # no answer at all
                statuses[code] = statuses.get(code, 0) + 1
                if code == 200:
                    ok_times.append(time.monotonic())

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for t in threads:
        t.start()
    time.sleep(seconds / 4)
    victims = [p for p in psutil.Process(process.pid).children(recursive=True) if marker in " ".join(p.cmdline())]
    if kind == "decode":  # the workers are the fork server's children, not the server itself
        victims = [child for server in victims for child in server.children()]
    killed_at = time.monotonic()
    for v in victims:
        v.kill()
    time.sleep(seconds * 3 / 4)
    stop.set()
    for t in threads:
        t.join()
    after = [t for t in ok_times if t > killed_at]
    return {
        "killed": f"{len(victims)} {kind} worker(s)",
        "statuses": dict(sorted(statuses.items())),
        "recovery_s": (after[0] - killed_at) if after else None,
    }


def fault_runs(args, env: dict) -> int:
    with tempfile.TemporaryDirectory(prefix="stadapter-faults-") as tmp:
        env = {**env, "BENTOML_HOME": str(Path(tmp) / "bentoml"), "STADAPTER_BUNDLE": str(args.bundle)}
        env["STADAPTER_MAX_LATENCY_MS"] = "30000"  # the served default: overload is answered, not queued forever
        video, bomb = make_video(Path(tmp)).read_bytes(), make_bomb(Path(tmp))
        log_path = args.server_log or Path(tmp) / "server.log"
        process, url = start_server(env, log_path)
        try:
            wait_ready(process, url, log_path, timeout_s=600)
            good_latencies(url, video, 3)  # warm-up
            bombs = bomb_run(url, video, bomb, args.low_requests)
            print(json.dumps({"bombs": bombs}), file=sys.stderr)
            kills = [kill_run(url, process, video, kind) for kind in ("decode", "model")]
        except ServerFailed as e:
            sys.exit(str(e))
        finally:
            stop_server(process)
    print("\n| run | figure |\n|---|---|")
    print(f"| good p50 alone | {bombs['good_p50_ms_alone']:.0f} ms |")
    print(
        f"| good p50 beside two bombs in flight | {bombs['good_p50_ms_beside_two_bombs']:.0f} ms "
        f"({bombs['ratio']:.2f}x, target <= 2x); good errors {bombs['good_errors']} |"
    )
    print(f"| bombs answered | {bombs['bombs_sent']}, statuses {bombs['bomb_statuses']} |")
    for k in kills:
        recovery = "never" if k["recovery_s"] is None else f"{k['recovery_s']:.1f} s"
        print(
            f"| kill -9 {k['killed']} under 4 clients | answers by status {k['statuses']}; first 200 after {recovery} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"bombs": bombs, "kills": kills}, indent=2))
    return 0


def make_long_video(folder: Path, minutes: float) -> bytes:
    path = folder / "long.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25", "-t", str(minutes * 60)]
        + ["-c:v", "libx264", "-preset", "ultrafast", "-crf", "32", str(path)],  # well under the upload limit
        check=True,
    )
    return path.read_bytes()


def task_running(url: str, task_id: str) -> bool:
    status = httpx.get(f"{url}/timeline_task/status", params={"task_id": task_id}, timeout=60).json()["status"]
    return status in ("pending", "in_progress")


def task_run(args, env: dict) -> int:
    """/classify p50 without and with one long task decoding beside it, alternating until the task ends."""
    with tempfile.TemporaryDirectory(prefix="stadapter-task-") as tmp:
        env = {**env, "BENTOML_HOME": str(Path(tmp) / "bentoml"), "STADAPTER_BUNDLE": str(args.bundle)}
        video, long = make_video(Path(tmp)).read_bytes(), make_long_video(Path(tmp), args.task_minutes)
        log_path = args.server_log or Path(tmp) / "server.log"
        process, url = start_server(env, log_path)
        alone, beside, rounds = [], [], 0
        try:
            wait_ready(process, url, log_path, timeout_s=600)
            good_latencies(url, video, 3)  # warm-up
            alone += good_latencies(url, video, args.low_requests)[0]
            files = {"video": ("long.mp4", long, "video/mp4")}
            submitted = httpx.post(f"{url}/timeline_task/submit", files=files, timeout=600)
            if submitted.status_code != 200:
                sys.exit(f"the task was refused: {submitted.status_code} {submitted.text}")
            task_id = submitted.json()["task_id"]
            progress = {}
            while task_running(url, task_id) and rounds < 3:
                beside += good_latencies(url, video, args.low_requests)[0]
                rounds += 1
                seen = httpx.get(f"{url}/timeline_task/progress", params={"task_id": task_id}, timeout=60)
                progress = seen.json() if seen.status_code == 200 else progress
            status = httpx.get(f"{url}/timeline_task/status", params={"task_id": task_id}, timeout=60).json()
        except ServerFailed as e:
            sys.exit(str(e))
        finally:
            stop_server(process)
    ratio = statistics.median(beside) / statistics.median(alone)
    print(f"\n/classify of a 10 s 640x360 video beside one /timeline_task of a {args.task_minutes:g}-minute video\n")
    print("| run | requests | p50 ms | p95 ms |\n|---|---:|---:|---:|")
    for name, values in (("alone", alone), ("with the task running", beside)):
        print(f"| {name} | {len(values)} | {percentile(values, 50):.0f} | {percentile(values, 95):.0f} |")
    print(
        f"\np50 ratio: {ratio:.2f}x (target <= 2x); the task had done {progress.get('windows', '?')} windows "
        f"({progress.get('seconds', 0):.0f} s of video) after the last round, and was {status['status']}"
    )
    if args.json:
        args.json.write_text(json.dumps({"alone": alone, "with_task": beside, "ratio": ratio}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, required=True, help="model bundle to serve")
    p.add_argument("--requests", type=int, default=500, help="requests at the highest concurrency (default 500)")
    p.add_argument("--low-requests", type=int, default=100, help="requests at each lower concurrency (default 100)")
    p.add_argument(
        "--clients",
        type=int,
        nargs="+",
        default=[1, 4, 16],
        help="concurrency levels, starting with 1 (paired with the in-process baseline; default 1 4 16)",
    )
    p.add_argument("--warmup", type=int, default=16, help="warm-up requests at the highest concurrency")
    p.add_argument("--views", type=int, default=None, help="views per video (default: the bundle's)")
    p.add_argument("--backend", default="auto", help="STADAPTER_BACKEND for the server (default auto)")
    p.add_argument("--decode-workers", type=int, default=2, help="STADAPTER_DECODE_WORKERS (default 2)")
    p.add_argument("--max-batch-size", type=int, default=16, help="STADAPTER_MAX_BATCH_SIZE (default 16)")
    p.add_argument("--raw-runs", type=int, default=3, help="timed raw predict calls at the formed batch (default 3)")
    p.add_argument("--server-log", type=Path, help="keep the server's log here (default: a temporary file)")
    p.add_argument("--json", type=Path, help="write every figure here")
    p.add_argument(
        "--faults",
        action="store_true",
        help="instead: good-request latency beside two decode bombs in flight, then kill -9 of the decode "
        "workers and of the model worker under 4 clients (failed requests, time to recover)",
    )
    p.add_argument(
        "--task",
        action="store_true",
        help="instead: good /classify latency alone and beside one long /timeline_task (p50 ratio)",
    )
    p.add_argument("--task-minutes", type=float, default=20, help="length of the task's video (default 20)")
    args = p.parse_args(argv)
    if args.clients[0] != 1:
        p.error("--clients must start with 1")

    from stadapter_deploy import load_predictor

    fields = {} if args.views is None else {"views": str(args.views)}
    env = {
        "STADAPTER_BACKEND": args.backend,
        "STADAPTER_DECODE_WORKERS": str(args.decode_workers),
        "STADAPTER_MAX_BATCH_SIZE": str(args.max_batch_size),
        "STADAPTER_MAX_LATENCY_MS": "600000",  # measure throughput, never shed load
        "STADAPTER_REQUEST_TIMEOUT_S": "3600",
        "BENTOML_DO_NOT_TRACK": "True",
    }
    if args.faults:
        return fault_runs(args, env)
    if args.task:
        return task_run(args, env)
    with tempfile.TemporaryDirectory(prefix="stadapter-load-") as tmp:
        # A private BentoML home: every `bentoml serve` start empties $BENTOML_HOME/prometheus_multiproc_dir,
        # which would wipe this server's batch metrics if another server started meanwhile.
        env["BENTOML_HOME"] = str(Path(tmp) / "bentoml")
        video_path = make_video(Path(tmp))
        video = video_path.read_bytes()
        log_path = args.server_log or Path(tmp) / "server.log"
        process, url = start_server({**env, "STADAPTER_BUNDLE": str(args.bundle)}, log_path)
        try:
            wait_ready(process, url, log_path, timeout_s=600)
        except ServerFailed as e:
            stop_server(process)
            sys.exit(str(e))
        try:
            backend = httpx.get(f"{url}/metadata", timeout=60).json()["backend"]
            print(f"server up at {url} on {backend}; video {len(video) / 1e6:.2f} MB", file=sys.stderr)

            predictor = load_predictor(args.bundle, backend=backend)
            predictor.classify(video_path, views=args.views)  # warm-up
            views = len(predictor.preprocess(video_path, args.views).clips)

            top = max(args.clients)
            asyncio.run(run_level(url, video, top, args.warmup, fields))
            rss_before = server_rss_mb(process)
            levels = []
            for clients in args.clients:
                before = batch_counters(url)
                n = args.requests if clients == top else args.low_requests
                if clients == 1:
                    level, baseline = paired_level(url, video, video_path, predictor, n, args.views)
                else:
                    level = asyncio.run(run_level(url, video, clients, n, fields))
                after = batch_counters(url)
                calls = max(after["calls"] - before["calls"], 1)
                level["clips_per_call"] = (after["clips"] - before["clips"]) / calls
                level["requests_per_call"] = (after["requests"] - before["requests"]) / calls
                levels.append(level)
                print(json.dumps(level), file=sys.stderr)
            rss_after = server_rss_mb(process)
            total = args.warmup + sum(lv["requests"] for lv in levels)
        finally:
            stop_server(process)
        if any(lv["errors"] for lv in levels):
            errors = [line for line in log_path.read_text().splitlines() if "ERROR" in line or "Error" in line]
            print("server log, errors:\n" + "\n".join(errors[-40:]), file=sys.stderr)

    formed = max(1, round(levels[-1]["clips_per_call"]))
    clips = np.random.default_rng(0).standard_normal((formed, *predictor.input_shape), dtype=np.float32)
    predictor.predict(clips)
    raw_ms = statistics.median(time_ms(lambda: predictor.predict(clips), args.raw_runs))
    raw_rps = formed / (raw_ms / 1e3) / views
    result = {
        "bundle": str(args.bundle),
        "model": predictor.model_name,
        "backend": backend,
        "views": views,
        "video": "10 s, 640x360, 30 fps, H.264 (synthetic)",
        "baseline_classify_p50_ms": statistics.median(baseline),
        "levels": levels,
        "rss_mb_before": rss_before,
        "rss_mb_after": rss_after,
        "requests_between_rss": total - args.warmup,
        "raw_predict_batch": formed,
        "raw_predict_ms": raw_ms,
        "raw_predict_rps": raw_rps,
    }
    overhead = levels[0]["p50_ms"] - result["baseline_classify_p50_ms"]
    ratio = levels[-1]["throughput_rps"] / raw_rps
    growth = rss_after / rss_before - 1
    result.update(overhead_p50_ms=overhead, throughput_vs_raw=ratio, rss_growth=growth)

    print(f"\n{predictor.model_name} on {backend}, {views} view(s) per video\n")
    print("| clients | requests | p50 ms | p95 ms | p99 ms | req/s | errors | clips/call | requests/call |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for lv in levels:
        print(
            f"| {lv['clients']} | {lv['requests']} | {lv['p50_ms']:.0f} | {lv['p95_ms']:.0f} | {lv['p99_ms']:.0f} "
            f"| {lv['throughput_rps']:.2f} | {lv['errors']} | {lv['clips_per_call']:.1f} "
            f"| {lv['requests_per_call']:.1f} |"
        )
    print(f"\nin-process Predictor.classify p50: {result['baseline_classify_p50_ms']:.0f} ms")
    print(f"service overhead at 1 client (p50 - in-process p50): {overhead:.0f} ms (target <= 30)")
    print(
        "latency outside the server's own decode/preprocess/infer timings, 1 client, p50: "
        f"{levels[0]['outside_server_timings_p50_ms']:.0f} ms"
    )
    print(
        f"raw predict at batch {formed}: {raw_ms:.0f} ms = {raw_rps:.2f} videos/s; "
        f"service at {levels[-1]['clients']} clients: {ratio:.2f}x of it (target >= 0.9)"
    )
    print(
        f"server RSS: {rss_before:.0f} MB after warm-up, {rss_after:.0f} MB after "
        f"{result['requests_between_rss']} more requests ({growth:+.1%}, target <= +10%)"
    )
    print(f"errors: {sum(lv['errors'] for lv in levels)} (target 0)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
