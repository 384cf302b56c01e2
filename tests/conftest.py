import shutil

import pytest

SERVER_PROCESSES: dict = {}  # url -> the Popen of each server the session started


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """A verified tiny model bundle (safetensors + model.onnx), shared by the whole session; treat as read-only."""
    from helpers import make_tiny_bundle

    return make_tiny_bundle(tmp_path_factory.mktemp("tiny-bundle"))


@pytest.fixture(scope="session")
def motion_video(tmp_path_factory):
    """One synthetic motion clip (H.264 mp4, 64x48, 16 frames, class 1 "moving right"); read-only."""
    from stadapter_deploy.video.synthetic import write_motion_video

    return write_motion_video(tmp_path_factory.mktemp("motion-video") / "moving_right.mp4", label=1, seed=0)


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
    """A tiny synthetic motion dataset (12 train / 6 val clips, 6 classes): root with train.txt, val.txt,
    classes.txt, videos/; read-only."""
    from stadapter_deploy.video.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic-data"), 12, 6, progress=False)


@pytest.fixture(scope="session")
def trained_bundle(tmp_path_factory):
    """The tiny model trained in-process on clips of the six synthetic classes, exported (parity-gated);
    98 % top-1 on the synthetic validation set. Read-only.

    `python -m train synthetic` takes minutes on a loaded 2-core machine; this loop on pre-rendered clips
    (30 seeds a class, 300 steps of 16) takes ~10 s on a quiet one, ~40 s on a busy one.
    """
    import torch
    from helpers import synthetic_meta

    from stadapter_deploy import build_model
    from stadapter_deploy.export.exporter import ExportOptions, export_bundle, load_source
    from stadapter_deploy.model import save_checkpoint
    from stadapter_deploy.preprocessing import Preprocessing
    from stadapter_deploy.train.optim import build_optimizer
    from stadapter_deploy.video.pipeline import eval_views_from_frames
    from stadapter_deploy.video.sampling import eval_indices
    from stadapter_deploy.video.synthetic import CLASS_NAMES, render_motion_frames

    torch.manual_seed(0)
    pre = Preprocessing(num_frames=8, sampling_rate=0, size=32)
    indices = eval_indices(16, 8, 0)[0]
    classes = range(len(CLASS_NAMES))
    clips = torch.stack(
        [eval_views_from_frames(render_motion_frames(c, s)[indices], pre)[0] for s in range(30) for c in classes]
    )
    targets = torch.tensor([c for _ in range(30) for c in classes])
    model = build_model("tiny", num_classes=len(CLASS_NAMES))
    optimizer = build_optimizer(model, lr=1e-2, weight_decay=0.01)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny steps: more threads only wait on each other (6x slower on 2 busy cores)
    try:
        for _ in range(300):
            batch = torch.randint(0, len(clips), (16,))
            loss = torch.nn.functional.cross_entropy(model(clips[batch]), targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    root = tmp_path_factory.mktemp("trained")
    extra = {**synthetic_meta(), "class_names": CLASS_NAMES}
    checkpoint = save_checkpoint(model.eval(), root / "checkpoint", extra=extra)
    options = ExportOptions(verify=True, progress=False, check_videos=2, check_random=2)
    return export_bundle(load_source(checkpoint=checkpoint), root / "bundle", options).path


@pytest.fixture(scope="session")
def synthetic_val(tmp_path_factory):
    """The synthetic validation set: the 120 val clips of `make_synthetic_dataset` (seed 0), as H.264 files;
    [(path, label, seed)], the seed telling where the moving square is (square_masks). Read-only."""
    from stadapter_deploy.video.synthetic import clip_seed, make_synthetic_dataset

    root = make_synthetic_dataset(tmp_path_factory.mktemp("synthetic-val"), 0, 120, progress=False)
    entries = [line.split() for line in (root / "val.txt").read_text().splitlines()]
    return [(root / rel, int(label), clip_seed("val", i)) for i, (rel, label) in enumerate(entries)]


@pytest.fixture(scope="session")
def server(tiny_bundle, tmp_path_factory):
    """One running `bentoml serve` over the tiny bundle for the whole session, with the demo page at /ui;
    yields (url, its TMPDIR). Stopped by its process group."""
    from helpers import SERVE_BODY_TIMEOUT_S, SERVE_MAX_TASKS, SERVE_MAX_UPLOAD_MB

    from serve.local import ServerFailed, start_server, stop_server, wait_ready

    root = tmp_path_factory.mktemp("serve")
    server_tmp = root / "tmp"
    server_tmp.mkdir()
    served = shutil.copytree(tiny_bundle, root / "served-bundle")  # a copy: one test rewrites it in place
    env = {
        "STADAPTER_BUNDLE": str(served),
        "STADAPTER_MAX_UPLOAD_MB": str(SERVE_MAX_UPLOAD_MB),
        "STADAPTER_BODY_TIMEOUT_S": str(SERVE_BODY_TIMEOUT_S),
        "STADAPTER_MAX_TASKS": str(SERVE_MAX_TASKS),
        "STADAPTER_DECODE_WORKERS": "4",  # decodes finish in fours, so they meet at the model
        "STADAPTER_MAX_VIDEOS": "4",
        "STADAPTER_MAX_TIMELINE_WINDOWS": "8",
        "STADAPTER_UI": "1",  # the demo page at /ui, calling the service in-process
        "TMPDIR": str(server_tmp),  # every temp file the server makes lands here, so a test can look
        # Each `bentoml serve` empties $BENTOML_HOME/prometheus_multiproc_dir when it starts: a private
        # home keeps another server on this machine from wiping this one's metrics.
        "BENTOML_HOME": str(root / "bentoml"),
    }
    log_path = root / "server.log"
    process, url = start_server(env, log_path)
    process.log_path = log_path  # for tests that read what the server logged
    process.env_for_tests = env  # for tests that build the same app in-process (python -m serve.routes)
    try:
        try:
            wait_ready(process, url, log_path)
        except ServerFailed as e:
            pytest.fail(str(e))
        SERVER_PROCESSES[url] = process
        yield url, server_tmp
    finally:
        stop_server(process)


@pytest.fixture(scope="session")
def server_process(server):
    """The session server's Popen (its log at .log_path), for tests that kill its workers."""
    return SERVER_PROCESSES[server[0]]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """The hard-case videos of tests/video_corpus.py (B-frames, MPEG-2 PS, TS, AVI, VP9 alt-ref, ...): name -> path."""
    import video_corpus

    return video_corpus.make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def bomb(tmp_path_factory):
    """A 189 KB H.264 file declaring two 8000x8000 frames (a decode bomb)."""
    import video_corpus

    path = tmp_path_factory.mktemp("bomb") / "bomb.mp4"
    video_corpus.ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "color=black:size=8000x8000:rate=1",
        "-frames:v",
        "2",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        str(path),
    )
    return path


# ----------------------------------------------------------------------------- no process left behind

SESSION_TAG = "STADAPTER_TEST_SESSION"
LEFT_BEHIND_GRACE_S = 10.0


def pytest_sessionstart(session):
    """Tag this run: every process it starts, at any depth, inherits the variable (spawned workers too)."""
    import os
    import uuid

    os.environ[SESSION_TAG] = uuid.uuid4().hex


def tagged_processes(tag: str) -> list[int]:
    """PIDs of the processes, other than this one, whose environment holds this run's tag."""
    import os

    import psutil

    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = open(f"/proc/{entry}/environ", "rb").read()
            cmdline = open(f"/proc/{entry}/cmdline", "rb").read()
        except OSError:
            continue
        if f"{SESSION_TAG}={tag}".encode() not in environ.split(b"\0"):
            continue
        own_helper = b"resource_tracker" in cmdline or b"multiprocessing.forkserver" in cmdline
        try:
            if own_helper and psutil.Process(int(entry)).ppid() == os.getpid():
                continue  # multiprocessing's resource tracker and fork server of this process: they end with it
        except psutil.Error:
            continue  # gone meanwhile
        found.append(int(entry))
    return found


def pytest_sessionfinish(session, exitstatus):
    """The suite leaves no process behind: what it started and did not stop fails the run (and is killed)."""
    import os
    import time

    import psutil

    tag = os.environ.get(SESSION_TAG)
    if not tag:
        return
    deadline = time.monotonic() + LEFT_BEHIND_GRACE_S  # servers and workers being stopped get a moment
    while (left := tagged_processes(tag)) and time.monotonic() < deadline:
        time.sleep(0.5)
    live = []
    for pid in left:
        try:
            process = psutil.Process(pid)
            if process.status() != psutil.STATUS_ZOMBIE:
                live.append(f"{pid} {' '.join(process.cmdline())[:160]}")
                process.kill()
        except psutil.Error:
            pass
    if live:
        session.config.get_terminal_writer().line(
            "processes the test run left behind (killed now):\n  " + "\n  ".join(live), red=True
        )
        session.exitstatus = 1
