"""Training under real faults: killed torchrun workers, reused, read-only and full save folders, torn and
garbage checkpoints. Tiny preset, a few synthetic clips, real processes and real file systems."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from stadapter_deploy.errors import ConfigError
from stadapter_deploy.train import checkpoint as ckpt
from stadapter_deploy.train.config import build_config
from stadapter_deploy.train.loop import run
from train.cli import main as train_main

REPO = Path(__file__).resolve().parents[1]
JOB_TIMEOUT_S = 240  # one torchrun job, restarts included (about 30 s here); a hang fails the test instead
SETTINGS = dict(epochs=3, total_batch=8, num_workers=0, device="cpu", seed=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """48 train / 12 val synthetic motion clips: 6 steps of 8 clips an epoch (torchrun jobs), and lists of
    16 / 4 of them, 2 steps an epoch (the runs in one process)."""
    from stadapter_deploy.video.synthetic import make_synthetic_dataset

    root = make_synthetic_dataset(tmp_path_factory.mktemp("faults-data"), 48, 12, progress=False)
    for split, count in (("train", 16), ("val", 4)):
        lines = (root / f"{split}.txt").read_text().splitlines()[:count]
        (root / f"small-{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def small(data: Path) -> dict:
    return dict(train_list=data / "small-train.txt", val_list=data / "small-val.txt")


def flags(settings: dict) -> list[str]:
    out = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        out += [flag] if value is True else [] if value is False else [flag, str(value)]
    return out


def train_args(data: Path, save_dir: Path, **extra) -> list[str]:
    return ["synthetic", "--data-root", str(data), "--save-dir", str(save_dir), *flags(SETTINGS | extra)]


def train_here(data: Path, save_dir: Path, **extra) -> dict:
    """A run in this process, on the small lists."""
    return run(build_config("synthetic", save_dir, data_root=data, **(SETTINGS | small(data) | extra)))


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def final_sha(save_dir: Path) -> str:
    return sha256(save_dir / "final" / "model.safetensors")


# ----------------------------------------------------------------------------- torchrun jobs


class Job:
    """`torchrun --nproc_per_node 2` over `python -m train`, its output in a file; stopped on every path."""

    def __init__(self, tmp: Path, args: list[str], max_restarts: int):
        self.log = tmp / f"torchrun-{len(list(tmp.glob('torchrun-*.log')))}.log"
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        torchrun += ["--max-restarts", str(max_restarts), "--monitor-interval", "0.1"]
        env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                [*torchrun, "-m", "train", *args, "--dist-timeout", "60"],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.deadline = time.monotonic() + JOB_TIMEOUT_S
        self.seen: set[int] = set()

    def output(self) -> str:
        return self.log.read_text()

    def workers(self) -> dict[int, int]:
        """rank -> pid of the live workers (torchrun starts each in a session of its own)."""
        found = {}
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                environ = open(f"/proc/{child.pid}/environ", "rb").read().split(b"\0")
            except OSError:
                continue
            ranks = [int(e[5:]) for e in environ if e.startswith(b"RANK=")]
            if ranks and b"TORCHELASTIC_RESTART_COUNT=0" in environ:  # the first attempt's workers
                found[ranks[0]] = child.pid
        self.seen |= set(found.values())
        return found

    def wait_for(self, condition, what: str) -> None:
        while not condition():
            if self.proc.poll() is not None:
                pytest.fail(f"torchrun ended before {what}:\n{self.output()[-3000:]}")
            if time.monotonic() > self.deadline:
                pytest.fail(f"no {what} within {JOB_TIMEOUT_S} s:\n{self.output()[-3000:]}")
            time.sleep(0.01)

    def finish(self) -> str:
        try:
            self.proc.wait(timeout=max(self.deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            pytest.fail(f"torchrun still running after {JOB_TIMEOUT_S} s:\n{self.output()[-3000:]}")
        text = self.output()
        assert self.proc.returncode == 0, text[-3000:]
        return text

    def stop(self) -> None:
        """Kill the agent and every worker it started, by PID (workers sit in sessions of their own)."""
        pids = {self.proc.pid} | self.seen
        with_children = set()
        for pid in pids:
            try:
                with_children |= {c.pid for c in psutil.Process(pid).children(recursive=True)}
            except psutil.Error:
                pass
        for pid in pids | with_children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()


def run_job(tmp: Path, args: list[str], max_restarts: int = 0, during=None) -> str:
    job = Job(tmp, args, max_restarts)
    try:
        if during is not None:
            during(job)
        return job.finish()
    finally:
        job.stop()


@pytest.fixture(scope="module")
def straight_run(data, tmp_path_factory) -> Path:
    """The uninterrupted two-process run that every interrupted one must end equal to."""
    tmp = tmp_path_factory.mktemp("straight")
    run_job(tmp, train_args(data, tmp / "run"))
    return tmp / "run"


def test_elastic_restart_after_a_worker_is_killed_mid_epoch_resumes_exactly(data, straight_run, tmp_path):
    save = tmp_path / "run"

    def kill_rank_1_in_epoch_2(job: Job) -> None:
        job.wait_for(lambda: (save / "log.jsonl").exists() and 0 in job.workers(), "the first epoch")
        job.wait_for(lambda: 1 in job.workers(), "rank 1")
        os.kill(job.workers()[1], signal.SIGKILL)

    # no --auto-resume: a restart is a resume all the same
    text = run_job(tmp_path, train_args(data, save), max_restarts=2, during=kill_rank_1_in_epoch_2)
    assert f"torchrun restart 1: resumed from {save / 'checkpoint-0.pth'} after epoch 1/3" in text, text[-3000:]
    assert "Connection refused" not in text
    assert final_sha(save) == final_sha(straight_run)
    assert [r["epoch"] for r in map(json.loads, (save / "log.jsonl").read_text().splitlines())] == [0, 1, 2]


def test_elastic_restart_after_a_kill_during_a_checkpoint_save_resumes_exactly(data, straight_run, tmp_path):
    """Rank 0 is made to write checkpoint-1 into a pipe that nobody empties, and is killed in mid-write."""
    save = tmp_path / "run"
    reader = []

    def kill_rank_0_while_it_saves(job: Job) -> None:
        job.wait_for(lambda: (save / "log.jsonl").exists() and 0 in job.workers(), "the first epoch")
        rank0 = job.workers()[0]
        temp = save / f".checkpoint-1.pth.tmp-{rank0}"  # the name atomic_torch_save writes to
        os.mkfifo(temp)
        reader.append(os.open(temp, os.O_RDONLY | os.O_NONBLOCK))
        head = bytearray()

        def writing() -> bool:
            try:
                head.extend(os.read(reader[0], 4096))
            except BlockingIOError:
                pass
            return len(head) >= 4

        job.wait_for(writing, "the checkpoint-1 save")
        assert head.startswith(b"PK\x03\x04")  # torch's zip: the save is under way, and stuck on the full pipe
        os.kill(rank0, signal.SIGKILL)

    try:
        text = run_job(tmp_path, train_args(data, save), max_restarts=2, during=kill_rank_0_while_it_saves)
    finally:
        for fd in reader:
            os.close(fd)
    assert f"torchrun restart 1: resumed from {save / 'checkpoint-0.pth'} after epoch 1/3" in text, text[-3000:]
    assert final_sha(save) == final_sha(straight_run)
    assert not list(save.glob(".checkpoint-*")), "the killed save's temp file is cleaned up"


def test_a_process_group_that_cannot_meet_fails_in_one_line_after_the_timeout(data, tmp_path):
    """Rank 0 of 2, and rank 1 never comes: the set-up gives up after --dist-timeout instead of hanging."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = os.environ | {"PYTHONPATH": str(REPO), "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}
    env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    argv = [sys.executable, "-m", "train", *train_args(data, tmp_path / "run"), "--dist-timeout", "3"]
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
    assert proc.returncode == 2, proc.stderr
    line = error_line(proc.stderr)
    assert line.startswith(f"error: rank 0 of 2 could not join the process group at 127.0.0.1:{port} within 3 s"), line


# ----------------------------------------------------------------------------- one folder, one run


def test_a_save_folder_belongs_to_one_run(data, tmp_path, capsys):
    save = tmp_path / "run"
    train_here(data, save, stop_after_epochs=1)  # an earlier run's checkpoint-0, then a crash
    identity = json.loads((save / "run.json").read_text())["identity"]
    assert identity["seed"] == 0 and identity["world_size"] == 1 and identity["total_batch"] == 8
    assert identity["data"]["train_list_sha256"] == sha256(data / "small-train.txt")

    with pytest.raises(ConfigError, match=r"belongs to another run \(seed 0 there, 1 here\).*--overwrite"):
        train_here(data, save, seed=1, auto_resume=True)
    with pytest.raises(ConfigError, match=r"recipe.epochs 3 there, 4 here"):
        train_here(data, save, epochs=4)
    with pytest.raises(ConfigError, match=r"holds this run's checkpoints up to checkpoint-0.pth: pass --auto-resume"):
        train_here(data, save)  # the same run, started over without being told: it would lose them
    assert sorted(p.name for p in save.iterdir()) == ["checkpoint-0.pth", "curves.png", "log.jsonl", "run.json"]

    # the refusal is one line at the command line
    capsys.readouterr()
    assert train_main(train_args(data, save, **small(data), seed=1)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "seed 0 there, 1 here" in err

    (save / "notes.txt").write_text("mine, not the run's")
    train_here(data, save, seed=1, epochs=1, overwrite=True)
    out = capsys.readouterr().out
    assert "--overwrite: removed 4 files of the earlier run" in out
    assert json.loads((save / "run.json").read_text())["identity"]["seed"] == 1
    log = [json.loads(line) for line in (save / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0]  # the old run's epoch is gone, not continued
    assert (save / "notes.txt").exists()

    # a checkpoint carries the identity: one from another run, copied in, is not resumed
    other = tmp_path / "other"
    train_here(data, other, stop_after_epochs=2)
    shutil.copy(other / "checkpoint-1.pth", save / "checkpoint-7.pth")
    with pytest.raises(ConfigError, match=r"checkpoint-7.pth was written by another run \(.*seed 0 there, 1 here"):
        train_here(data, save, seed=1, epochs=1, auto_resume=True)


def test_auto_resume_passes_over_a_torn_newest_checkpoint_and_ends_exact(data, tmp_path, capsys):
    straight, save = tmp_path / "straight", tmp_path / "run"
    train_here(data, straight)
    train_here(data, save, stop_after_epochs=2)  # checkpoints 0 and 1, then a crash
    newest = save / "checkpoint-1.pth"
    newest.write_bytes(newest.read_bytes()[:5000])  # torn: a disk that failed, a copy cut short
    capsys.readouterr()
    train_here(data, save, auto_resume=True, keep_last=1)
    out = capsys.readouterr().out
    assert "auto-resume: skipping checkpoint-1.pth (kept as checkpoint-1.pth.torn): not a readable" in out
    assert f"resumed from {save / 'checkpoint-0.pth'} after epoch 1/3" in out
    assert final_sha(save) == final_sha(straight)
    # keep_last=1 kept the newest good checkpoint, not a torn one in its place
    assert [p.name for _, p in ckpt.list_checkpoints(save)] == ["checkpoint-2.pth"]

    # every checkpoint torn: starting over is said, and the new checkpoints are the ones kept
    for _, path in ckpt.list_checkpoints(save):
        path.write_bytes(b"PK\x03\x04 torn")
    train_here(data, save, auto_resume=True, stop_after_epochs=1, keep_last=1)
    out = capsys.readouterr().out
    assert f"auto-resume: none of the 1 checkpoints is readable in {save}; starting at epoch 1" in out
    assert [p.name for _, p in ckpt.list_checkpoints(save)] == ["checkpoint-0.pth"]
    assert ckpt.load_training_checkpoint(save / "checkpoint-0.pth")["next_epoch"] == 1


# ----------------------------------------------------------------------------- disks


def mount_namespace() -> list[str] | None:
    """`unshare` into a private user + mount namespace, where this test may mount file systems."""
    if shutil.which("unshare") is None:
        return None
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    return ["unshare", "-rm"] if probe.returncode == 0 else None


def train_command(data: Path, save: Path, **extra) -> str:
    """The command line of a run on the small lists."""
    argv = [sys.executable, "-m", "train", *train_args(data, save, **(small(data) | extra))]
    return " ".join(map(str, argv))


def in_namespace(script: str, tmp: Path, ns: list[str]) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*ns, "bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=JOB_TIMEOUT_S
    )


def error_line(stderr: str) -> str:
    """The one error line, which ends the output (progress lines may come before it)."""
    errors = [line for line in stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and stderr.splitlines()[-1] == errors[0], stderr
    return errors[0]


def test_a_read_only_save_folder_is_refused_before_training(data, tmp_path):
    save = tmp_path / "run"
    train_here(data, save, stop_after_epochs=1)
    command = train_command(data, save, auto_resume=True)
    if os.geteuid() != 0:  # permissions bind everyone but root
        save.chmod(stat.S_IRUSR | stat.S_IXUSR)
        script = f"{command} > {tmp_path}/out.txt 2> {tmp_path}/err.txt"
        ns = []
    else:
        ns = mount_namespace()
        if ns is None:
            pytest.skip("as root only a read-only mount makes a folder read-only, and unshare -rm is not allowed here")
        script = (
            f"mount --bind {save} {save} && mount -o remount,bind,ro {save} && "
            f"{command} > {tmp_path}/out.txt 2> {tmp_path}/err.txt"
        )
    try:
        proc = in_namespace(script + "; echo $? > " + str(tmp_path / "rc.txt"), tmp_path, ns)
    finally:
        save.chmod(0o755)
    assert proc.returncode == 0, proc.stderr
    err, out = (tmp_path / "err.txt").read_text(), (tmp_path / "out.txt").read_text()
    assert (tmp_path / "rc.txt").read_text().strip() == "2", err
    assert err == f"error: cannot write to --save-dir {save}: read-only file system\n"
    assert "epoch" not in out  # refused before the plan, the resume and any step


def test_a_full_disk_is_one_line_and_the_resume_after_freeing_space_is_exact(data, tmp_path):
    """On a 3 MB tmpfs: one epoch, then a filler leaves 200 KB, smaller than a checkpoint (~320 KB) and
    final/ (~770 KB). The save of checkpoint-1 fails; with the space back, the resume ends exact. Then
    a full disk while final/ is rewritten leaves the earlier final/ whole."""
    ns = mount_namespace()
    if ns is None:
        pytest.skip("mounting a small tmpfs needs unshare -rm (a user and mount namespace)")
    straight = tmp_path / "straight"  # on the real disk, in the same kind of process as the others
    mnt, out = tmp_path / "mnt", tmp_path / "out"
    mnt.mkdir()
    save = mnt / "run"
    fill = (
        f"{sys.executable} -c \"import shutil; f = shutil.disk_usage('{mnt}').free - 200 * 1024; "
        f"open('{mnt}/filler', 'wb').write(bytes(max(f, 0)))\""
    )
    steps = [
        train_command(data, straight, epochs=2),
        train_command(data, save, epochs=2, stop_after_epochs=1),
        fill,
        train_command(data, save, epochs=2, auto_resume=True),  # fails saving checkpoint-1
        f"rm {mnt}/filler",
        train_command(data, save, epochs=2, auto_resume=True),  # resumes after epoch 1, ends
        f"cp {save}/final/model.safetensors {tmp_path}/before.safetensors",
        fill,
        train_command(data, save, epochs=2, auto_resume=True),  # only rewrites final/: fails
        f"cp -r {save} {out}",
    ]
    logged = [
        f"{s} > {tmp_path}/out-{i}.txt 2> {tmp_path}/err-{i}.txt; echo $? > {tmp_path}/rc-{i}.txt"
        for i, s in enumerate(steps)
    ]
    script = f"set -u; mount -t tmpfs -o size=3m tmpfs {mnt} && " + " && ".join(logged)
    proc = in_namespace(script, tmp_path, ns)
    assert proc.returncode == 0, proc.stderr

    def result(i: int) -> tuple[int, str, str]:
        read = lambda kind: (tmp_path / f"{kind}-{i}.txt").read_text()  # noqa: E731
        return int(read("rc")), read("out"), read("err")

    for step in (0, 1):
        rc, _, err = result(step)
        assert rc == 0, err
    rc, _, err = result(3)
    assert rc == 2 and "Traceback" not in err, err
    line = error_line(err)  # after the epoch's progress lines
    assert line.startswith(f"error: cannot write {save}/checkpoint-1.pth: no space left on device ("), err
    assert line.endswith("checkpoint-0.pth is the newest checkpoint; free space, then rerun with --auto-resume")
    rc, text, err = result(5)
    assert rc == 0, err
    assert f"resumed from {save}/checkpoint-0.pth after epoch 1/2" in text
    assert sha256(out / "final" / "model.safetensors") == final_sha(straight)

    rc, _, err = result(8)
    assert rc == 2 and error_line(err).startswith(f"error: cannot write {save}/final: no space left on device"), err
    assert sha256(tmp_path / "before.safetensors") == final_sha(straight)
    assert sorted(p.name for p in (out / "final").iterdir()) == ["config.json", "model.safetensors"]
    assert final_sha(out) == final_sha(straight)  # the earlier final/ is whole
    assert not list(out.glob(".*tmp*")) and not list(out.glob(".final*"))


# ----------------------------------------------------------------------------- garbage checkpoints


@pytest.mark.parametrize("flag", ["--resume", "--pretrain", "--eval-only --resume"])
def test_a_garbage_checkpoint_is_one_line(data, tmp_path, capsys, flag):
    garbage = tmp_path / "checkpoint-3.pth"
    garbage.write_bytes(random.Random(0).randbytes(4096))  # the same bytes every run
    argv = train_args(data, tmp_path / "run", epochs=1) + [*flag.split(), str(garbage)]
    assert train_main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: "), captured.err
    assert str(garbage) in captured.err
    assert "weights_only" not in captured.err + captured.out and "Traceback" not in captured.err
