"""stadapter-predict --engine ray on real Ray clusters: the local engine's lines, a node lost mid-run, Ctrl+C and
resume, and no process left behind. Each run is the real command in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import psutil
import pytest
import ray  # noqa: F401  (the ray extra: the README's test command installs it, so these never skip)

from predict.cli import main
from stadapter_deploy.model.config import get_preset
from stadapter_deploy.predict.options import PredictConfig
from stadapter_deploy.predict.ray_engine import blocks_for, plan_layout
from stadapter_deploy.preprocessing import Preprocessing
from stadapter_deploy.video.synthetic import write_motion_video

BIN = Path(sys.executable).parent
MARK = "STADAPTER_RAY_TEST_RUN"  # set on each command: every process of its cluster inherits it
RAY_NOISE = ("core_worker", "WARNING", "INFO", "Traceback", "ray.io")
# The command, telling by its exit code whether its process (the driver) loaded torch: it only hands the
# work out and writes lines, so it must not (~1.5 s of 2 cores before the cluster starts).
DRIVER = (
    "import sys; from predict.cli import main; code = main(sys.argv[1:]); "
    "sys.exit(code + 100 * ('torch' in sys.modules))"
)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def command(bundle: Path, inputs: list, out: Path, *flags: str) -> list[str]:
    return [str(BIN / "stadapter-predict"), "--bundle", str(bundle), *map(str, inputs), "--out", str(out)] + [
        "--engine",
        "ray",
        "--backend",
        "onnxruntime",
        "--no-progress",
        *flags,
    ]


def marked_env() -> tuple[dict, str]:
    mark = uuid.uuid4().hex
    return {**os.environ, MARK: mark, "OMP_NUM_THREADS": "1"}, mark


def marked_processes(mark: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(MARK) == mark and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except psutil.Error:
            continue
    return found


def wait_until(condition, proc: subprocess.Popen, what: str, timeout_s: float = 300.0) -> None:
    """Poll `condition` while the command runs: it must come true before the command ends, and in time."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert proc.poll() is None, f"the job ended before {what}"
        assert time.monotonic() < deadline, f"nothing happened for {timeout_s} s: waiting for {what}"
        time.sleep(0.02)
    assert proc.poll() is None, f"the job ended before {what}"


def assert_none_left(mark: str, grace_s: float = 20.0) -> None:
    """Every process the command started (its cluster, Ray's workers, their decode processes) is gone."""
    deadline = time.monotonic() + grace_s
    while (left := marked_processes(mark)) and time.monotonic() < deadline:
        time.sleep(0.25)
    names = [" ".join(p.cmdline())[:100] for p in left]
    for p in left:
        p.kill()
    assert not names, f"left behind: {names}"


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    """4 synthetic clips, a broken .mp4 and, beside them, a text file that is not a video."""
    root = tmp_path_factory.mktemp("ray-clips")
    for i in range(4):
        write_motion_video(root / "clips" / f"c{i}.mp4", label=i, seed=30 + i)
    (root / "clips" / "broken.mp4").write_bytes(b"not a video at all")
    (root / "notes.txt").write_text("not a video file")
    return root


@pytest.fixture(scope="module")
def slow_folder(tmp_path_factory):
    """12 copies of a 10 s 320x240 video (a few tenths of a second to decode each): a job that runs a while."""
    root = tmp_path_factory.mktemp("ray-slow") / "videos"
    root.mkdir()
    first = root / "v00.mp4"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=30", "-t", "10"]
        + ["-c:v", "libx264", "-preset", "ultrafast", str(first)],
        check=True,
    )
    for i in range(1, 12):
        shutil.copy(first, root / f"v{i:02d}.mp4")
    return root


def test_the_ray_engines_lines_are_the_local_engines(tiny_bundle, clip_folder, tmp_path, capsys):
    """A local cluster started and stopped by the command: the same lines as the local engine, a bad file and
    a file that is not a video included, nothing of Ray's own on stderr, and no torch in the driver."""
    inputs = [clip_folder / "clips", clip_folder / "notes.txt"]
    local_out, ray_out = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    base = ["--bundle", str(tiny_bundle), "--backend", "onnxruntime", "--no-progress"]
    assert main([*base, *map(str, inputs), "--out", str(local_out)]) == 1
    capsys.readouterr()
    env, mark = marked_env()
    args = [sys.executable, "-c", DRIVER, *command(tiny_bundle, inputs, ray_out)[1:]]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 101, "the driver imported torch"
    assert done.returncode == 1, done.stderr  # the two bad files failed, the rest went on
    assert "a local cluster of" in done.stderr and "6 videos, 2 failed" in done.stderr
    assert not any(noise in done.stderr for noise in RAY_NOISE) and done.stdout == "", done.stdout + done.stderr
    assert_none_left(mark)
    local, remote = {r["video"]: r for r in lines(local_out)}, {r["video"]: r for r in lines(ray_out)}
    assert len(lines(ray_out)) == len(remote) == len(local) == 6
    assert set(remote) == set(local)
    for video, want in local.items():
        got = remote[video]
        if "error" in want:
            assert got == want  # the same error line from both engines
            continue
        assert set(got) == set(want) and got["frames"] == want["frames"]
        assert [x["index"] for x in got["labels"]] == [x["index"] for x in want["labels"]]
        np.testing.assert_allclose([x["score"] for x in got["labels"]], [x["score"] for x in want["labels"]], atol=1e-5)
    assert "not a readable video file" in remote[str(clip_folder / "notes.txt")]["error"]


def test_a_node_lost_mid_run_loses_no_video_and_labels_none_twice(tiny_bundle, slow_folder, tmp_path):
    """A head and a worker node of one CPU each (ray.cluster_utils.Cluster); the worker node is killed while
    the job runs on it. Ray retries its tasks and restarts its actor on the head: every video, once."""
    from ray.cluster_utils import Cluster

    fast_health_checks = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500}
    fast_health_checks["health_check_failure_threshold"] = 4
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "_system_config": fast_health_checks})
    out = tmp_path / "results.jsonl"
    try:
        worker = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        env, mark = marked_env()
        proc = subprocess.Popen(
            command(tiny_bundle, [slow_folder], out, "--ray-address", cluster.address),
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            raylet = psutil.Process(worker.all_processes["raylet"][0].process.pid)
            wait_until(lambda: decoding(raylet), proc, "the worker node could be removed")
            cluster.remove_node(worker, allow_graceful=False)  # with a decode task running there
            done_before = len(out.read_text().splitlines()) if out.exists() else 0
            _, err = proc.communicate(timeout=240)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, err
        assert "2 CPUs on 2 nodes" in err and done_before < 12
        videos = [r["video"] for r in lines(out)]
        assert sorted(videos) == sorted(str(p) for p in slow_folder.iterdir())  # each once, none lost
        assert all("labels" in r for r in lines(out))
    finally:
        cluster.shutdown()


def decoding(raylet: psutil.Process) -> bool:
    """Whether a Ray worker of this node runs a decode task (Ray names a worker after what it runs)."""
    try:
        titles = [" ".join(p.cmdline()) for p in raylet.children(recursive=True)]
    except psutil.Error:
        return False
    return any(t.startswith("ray::MapBatches(decode_stage)") for t in titles)


def test_ctrl_c_or_a_kill_stops_the_job_and_its_cluster_and_a_rerun_resumes(tiny_bundle, slow_folder, tmp_path):
    """Ctrl+C mid-run (SIGINT to the process group, as a terminal sends it): exit 130, the lines written stay,
    no process of the local cluster is left. Then kill -9 mid-run: no process left either. The last run does
    only the rest: every video once, the earlier lines kept."""
    out = tmp_path / "results.jsonl"
    args = command(tiny_bundle, [slow_folder], out, "--batch-size", "1")  # a line per video, as it is done
    written = interrupt(args, out, after=2, how="ctrl-c")
    assert 2 <= len(written.splitlines()) < 12
    more = interrupt(args, out, after=len(written.splitlines()) + 1, how="kill")
    assert more.startswith(written) and len(written.splitlines()) < len(more.splitlines()) < 12
    env, mark = marked_env()
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{len(more.splitlines())} already in {out} (skipped)" in done.stderr
    assert out.read_text().startswith(more)  # the earlier runs' lines kept, not redone
    assert sorted(r["video"] for r in lines(out)) == sorted(str(p) for p in slow_folder.iterdir())
    assert_none_left(mark)


def interrupt(args: list[str], out: Path, after: int, how: str) -> str:
    """Run the command until `out` has `after` lines, then stop it `how`; what it wrote."""
    env, mark = marked_env()
    proc = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_until(lambda: out.exists() and len(out.read_text().splitlines()) >= after, proc, how)
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.kill()
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    if how == "ctrl-c":
        assert proc.returncode == 130, err
        assert "interrupted" in err and "rerun the same command to resume" in err and "Traceback" not in err
    assert_none_left(mark)
    return out.read_text()


def test_a_job_that_cannot_run_says_why_in_one_line_and_nothing_of_rays(tiny_bundle, clip_folder, tmp_path):
    """A model actor that cannot start (a precision the bundle lacks): the local engine's words, in one line; Ray's
    report of the dead actor stays in its log, off stdout (where lines go without --out) and stderr."""
    out = tmp_path / "r.jsonl"
    env, mark = marked_env()
    args = command(tiny_bundle, [clip_folder / "clips"], out, "--precision", "int8")
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stdout == "", done.stdout + done.stderr
    assert done.stderr.splitlines()[-1] == (
        "stadapter-predict: error: the Ray job failed: the bundle holds no int8 ONNX (it holds fp32)"
    )
    assert len(done.stderr.splitlines()) == 2 and not out.exists()  # the layout line, then the error
    assert_none_left(mark)


def test_without_ray_the_engine_says_how_to_install_it(tiny_bundle, clip_folder, tmp_path):
    """Where Ray is not installed (here: its import made to fail), one line that says how to get it."""
    script = "import sys; sys.modules['ray'] = None; from predict.cli import main; sys.exit(main(sys.argv[1:]))"
    args = command(tiny_bundle, [clip_folder / "clips"], tmp_path / "r.jsonl")[1:]
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        'stadapter-predict: error: --engine ray needs Ray (ray is missing): pip install -e ".[cpu,ray]" '
        '(or ".[gpu,ray]")'
    )


def test_a_cluster_address_nothing_answers_on_is_one_line(tiny_bundle, clip_folder, tmp_path):
    """--ray-address where no cluster runs: one line at once (ray.init alone would retry without end)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free once closed: nothing listens there
    args = command(tiny_bundle, [clip_folder / "clips"], tmp_path / "r.jsonl", "--ray-address", f"127.0.0.1:{port}")
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"stadapter-predict: error: cannot reach the Ray cluster at 127.0.0.1:{port} (Connection refused); start "
        f"it there with `ray start --head --port {port}`, or leave out --ray-address and RAY_ADDRESS for a local one"
    ]


def test_the_layout_follows_the_cluster():
    """Where the stages run, from the nodes' resources and the local engine's rule (predict/defaults.py)."""
    pre = Preprocessing(num_frames=8)
    tiny, b16 = get_preset("tiny").clip_gflops(8), get_preset("vit_b16_adapter12x384").clip_gflops(8)
    config = PredictConfig(bundle=Path("b"), inputs=[])
    two = plan_layout(config, tiny, pre, [{"CPU": 1.0}, {"CPU": 1.0}])  # the two-node test cluster
    assert (two.model_actors, two.gpus, two.decode_tasks, two.videos_per_call) == (2, 0, None, 8)
    big = plan_layout(config, b16, pre, [{"CPU": 16.0}, {"CPU": 16.0}])  # B/16 needs the cores: few decoders
    assert (big.model_actors, big.decode_tasks, big.videos_per_call) == (2, 2, 8)
    gpus = plan_layout(config, b16, pre, [{"CPU": 16.0, "GPU": 8.0}, {"CPU": 8.0}])
    assert (gpus.model_actors, gpus.gpus, gpus.videos_per_call) == (8, 8, 32)
    assert (
        plan_layout(PredictConfig(bundle=Path("b"), inputs=[], device="cpu"), b16, pre, [{"CPU": 4, "GPU": 1}]).gpus
        == 0
    )
    assert [blocks_for(n, 2) for n in (1, 12, 120, 10_000)] == [1, 12, 18, 1250]
