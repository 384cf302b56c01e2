"""The README is a contract: every command block of its walkthrough and of the Data, Train, Export, Predict,
Serve and Demo sections runs here, and what the README shows a command print is checked against what it
prints. The quickstart block at the top is tests/test_quickstart.py's; the test command, tests/test_readme.py's.

Each section runs in a copy of one stand-in folder (tests/readme_runner.py, `make_world`) holding every path
the README names as a tiny file of the real format: ViT-B-16.pt and ViT-L-14-336px.pt are tiny CLIP ViTs in
OpenAI's TorchScript format, checkpoint-11.pth a reference ST-Adapter checkpoint for the first, data.toml the
README's own with its /data/ folders made small, k400/ the README's two example entries plus a broken and a
missing one, clip.mp4, long.mp4, ... synthetic motion clips, runs/ and bundles/ the tiny models a section
reads without making them first. The other substitutions are readme_runner.SUBSTITUTIONS.

PLANS holds how each command runs: every README command must have a plan and every plan a README command,
so a changed command fails here until its plan is looked at again. A plan that does not simply run the
command says why (`why`): what CI lacks (GPUs, TensorRT, a cluster, Docker) and what is checked instead
(the arguments parse, the help, the refusal line), or which flags cut a long run down (`extra`).
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from readme_runner import (
    Shell,
    commands,
    json_keys,
    make_world,
    pattern,
    readme_blocks,
    shape_keys,
)

SECTIONS = ("walkthrough", "data", "train", "export", "predict", "serve", "demo")
CUT = ("--epochs", "1", "--total-batch", "4")  # 12 epochs of batch 192 do not fit CI; 1 epoch of 4 clips do
CUT_WHY = "cut to 1 epoch of batch 4 (--epochs 1 --total-batch 4) on the stand-in data"


@dataclass(frozen=True)
class Plan:
    how: str = "run"  # run | server | demo | torchrun | parse | help | absent
    why: str = ""  # for anything but a plain run: what CI lacks, and what is checked instead
    extra: tuple[str, ...] = ()  # arguments added to cut a long run down (said in `why`)
    codes: tuple[int, ...] = (0,)  # exit codes it may end with
    shows: tuple[str, ...] = ()  # parts of its README notes that are output lines (patterns)
    any_number: bool = False  # the README's figures come from a full run, the test's from a cut-down one
    json: str = ""  # its README note giving the JSON shape of what it prints
    says: str = ""  # what its output must hold beside what the README shows (a refusal's words)
    clears: str = ""  # a folder removed first: the README gives alternatives writing the same one
    files: tuple[str, ...] = ()  # files it must leave; the JSON shape is that of the first one's lines, if any
    output_block: bool = False  # the README's text block after its block is its output
    help: tuple[str, ...] = ()  # for how="help": the command whose help is checked


PLANS: dict[str, Plan] = {
    # ---- walkthrough: the real path, in order (each step reads what the one before wrote)
    "python -m stadapter_deploy.video.check_list k400/train.txt --root k400/videos --num-classes 400 --out "
    "k400/train_clean.txt": Plan(
        shows=(
            "<kept> of <total> entries kept -> k400/train_clean.txt; <dropped> dropped -> "
            "k400/train_clean.txt.dropped.tsv",
        ),
        says="2 of 4 entries kept",
    ),
    "torchrun --nproc_per_node 8 -m train k400 --clip ViT-B-16.pt --data-config data.toml --save-dir runs/k400 "
    "--auto-resume": Plan(
        how="torchrun",
        why="8 GPUs: torchrun's parser takes its options, and the training runs in one process on the CPU, " + CUT_WHY,
        extra=CUT,
        shows=("epoch 12/12: train_loss ..., val_acc1 ..., val_acc5 ...",),
        any_number=True,
        clears="runs/k400",  # the stand-in folder's runs/k400 is for the sections that read it
        files=("runs/k400/final/model.safetensors",),
    ),
    "stadapter-export --checkpoint runs/k400/final --out bundles/k400 --fp16 --trt": Plan(
        why="no TensorRT or GPU in CI: the ONNX bundle is written, then the one-line refusal with exit 2",
        codes=(2,),
        shows=("wrote <folder>/bundles/k400: ..., 400 classes",),
        says="--trt skipped",
        clears="bundles/k400",
        files=("bundles/k400/model.fp16.onnx",),
    ),
    "STADAPTER_BUNDLE=bundles/k400 bentoml serve": Plan(how="server"),
    "curl -F video=@clip.mp4 http://localhost:3000/classify": Plan(
        why="the README's backend is tensorrt (a GPU); here the answer's is onnxruntime-cpu: its keys are checked",
        json='{"labels": [{"label": "...", "index": ..., "score": ...}, ...], "backend": "tensorrt", "frames": [...], '
        '"timings_ms": {...}}',
    ),
    "python -m demo --service http://localhost:3000": Plan(
        how="demo", shows=("Demo running at http://127.0.0.1:7860/  (Ctrl+C to stop)",)
    ),
    # ---- data
    "python -m stadapter_deploy.video.check_list k400/train.txt --root k400/videos --num-classes 400 --out "
    "k400/train_clean.txt --workers 8": Plan(
        says="2 of 4 entries kept", files=("k400/train_clean.txt", "k400/train_clean.txt.dropped.tsv")
    ),
    # ---- train
    "python -m train k400 --dataset ucf101 --clip ViT-L-14-336px.pt --data-config data.toml --save-dir "
    "runs/ucf101": Plan(
        why=CUT_WHY + "; the stand-in ViT-L-14-336px.pt is a tiny ViT at 48 px",
        extra=CUT,
        shows=(
            "k400 recipe on dataset ucf101: <N> train / <M> val videos, 101 classes; model",
            "(inferred from ViT-L-14-336px.pt;",
        ),
    ),
    "stadapter-export --checkpoint runs/ucf101/final --out bundles/ucf101": Plan(files=("bundles/ucf101/model.onnx",)),
    "python -m train k400 --clip ViT-B-16.pt --data-config data.toml --save-dir runs/k400 --auto-resume": Plan(
        why=CUT_WHY, extra=CUT, clears="runs/k400"
    ),
    "torchrun --nproc_per_node 8 --max-restarts 3 -m train k400 --clip ViT-B-16.pt --data-config data.toml "
    "--save-dir runs/k400 --auto-resume": Plan(
        how="parse",
        why="8 GPUs: the arguments parse (torchrun's parser and ours); the walkthrough runs the same training "
        "in one process, and tests/test_train_faults.py restarts torchrun jobs on the CPU",
    ),
    "torchrun --nnodes 2 --nproc_per_node 4 --max-restarts 3 --rdzv-backend c10d --rdzv-endpoint node0:29400 "
    "--rdzv-id k400 -m train k400 --clip ViT-B-16.pt --data-config data.toml --save-dir /shared/runs/k400 "
    "--auto-resume": Plan(how="parse", why="2 nodes of 4 GPUs: the arguments parse (torchrun's parser and ours)"),
    "python -m train synthetic --save-dir runs/synthetic": Plan(
        why=CUT_WHY + " (the figures come from the full run: benchmarks/readme_figures.py)",
        extra=CUT,
        clears="runs/synthetic",
        output_block=True,  # the text block under the commands is its output, numbers aside
    ),
    "python -m train synthetic --save-dir runs/synthetic-noad --no-adapters": Plan(why=CUT_WHY, extra=CUT),
    # ---- export
    "stadapter-export --checkpoint runs/synthetic/final --out bundles/synthetic": Plan(clears="bundles/synthetic"),
    "stadapter-export --clip ViT-B-16.pt --adapter checkpoint-11.pth --dataset k400 --out bundles/k400 --fp16": Plan(
        clears="bundles/k400", files=("bundles/k400/model.fp16.onnx",)
    ),
    "stadapter-export --checkpoint runs/k400/final --out bundles/k400-cpu --int8": Plan(
        files=("bundles/k400-cpu/model.int8.onnx",)
    ),
    "stadapter-export --checkpoint runs/k400/final --out bundles/k400 --trt --trt-max-batch 64": Plan(
        why="no TensorRT or GPU in CI: the ONNX bundle is written, then the one-line refusal with exit 2",
        codes=(2,),
        says="--trt skipped",
        clears="bundles/k400",
    ),
    # ---- predict
    "stadapter-predict --bundle bundles/synthetic runs/synthetic-data/videos --out results.jsonl": Plan(
        json='{"video", "labels": [{"label", "index", "score"}], "frames", "backend", "precision", "timings_ms"}',
        files=("results.jsonl",),
        clears="results.jsonl",
    ),
    "stadapter-predict --bundle bundles/synthetic @runs/synthetic-data/val.txt --out val.jsonl": Plan(
        says="top-1", files=("val.jsonl",)
    ),
    "stadapter-predict --bundle bundles/synthetic --timeline long.mp4 --window 2 --stride 1 --out timeline.jsonl": Plan(
        json='{"video", "start_s", "end_s", "labels", "frames", "window", "windows"}', files=("timeline.jsonl",)
    ),
    "stadapter-predict --bundle bundles/synthetic --timeline rtsp://camera.local:8554/live --out live.jsonl": Plan(
        why="no camera in CI: the stream's error line (exit 1); tests/test_live.py streams HTTP and UDP",
        codes=(1,),
        says="cannot open the stream rtsp://camera.local:8554/live",
    ),
    "stadapter-predict --bundle bundles/k400 /shared/archive --out /shared/results.jsonl --engine ray "
    "--ray-address node0:6379": Plan(
        why="no cluster in CI: the one-line refusal (exit 2)",
        codes=(2,),
        says="cannot reach the Ray cluster at node0:6379",
    ),
    "stadapter-predict --bundle bundles/synthetic runs/synthetic-data/videos --out results.jsonl --engine ray": Plan(
        how="parse",
        why="a local Ray cluster costs ~20 core-seconds to start: its arguments parse here, and "
        "tests/test_predict_ray.py runs this command on local clusters",
    ),
    "ray start --head --port 6379": Plan(how="help", why="starts a cluster head: its help", help=("ray", "start")),
    "ray start --address node0:6379": Plan(how="help", why="joins a cluster: its help", help=("ray", "start")),
    "stadapter-predict --bundle /shared/bundles/k400 /shared/archive --out /shared/results.jsonl --engine ray "
    "--ray-address node0:6379": Plan(
        why="no cluster in CI: the one-line refusal (exit 2)",
        codes=(2,),
        says="cannot reach the Ray cluster at node0:6379",
    ),
    "stadapter-predict --bundle bundles/synthetic runs/synthetic-data/videos --out results.jsonl "
    "--features-out archive.npy": Plan(files=("results.jsonl", "archive.npy", "archive.json")),
    "stadapter-predict --bundle bundles/synthetic --similar query.mp4 --index archive.npy --top-k 5": Plan(
        json='{"query": "query.mp4", "video": "runs/synthetic-data/videos/val_00017.mp4", "score": 0.9981}'
    ),
    "stadapter-predict --bundle bundles/synthetic runs/synthetic-data/videos --explain heatmaps/": Plan(
        json='{"video", "labels", "explanation"}'
    ),
    # ---- serve
    "STADAPTER_BUNDLE=bundles/synthetic bentoml serve": Plan(how="server"),
    "curl -F video=@clip.mp4 -F top_k=3 http://localhost:3000/classify": Plan(
        json='{"labels": [{"label": "moving up", "index": 2, "score": 0.91}, ...], "backend": "onnxruntime-cpu", '
        '"frames": [1, 3, 5, 7, 8, 10, 12, 14], "timings_ms": {"decode": 11.4, "preprocess": 1.1, "infer": 7.8, '
        '"total": 22.8}}'
    ),
    "curl -F videos=@a.mp4 -F videos=@b.webm http://localhost:3000/classify_batch": Plan(
        json='{"results": [{...}, {...}]}'
    ),
    "curl -F video=@long.mp4 -F window_s=2 http://localhost:3000/classify_timeline": Plan(
        json='{"segments": [{"start_s", "end_s", "labels", "frames"}, ...]}'
    ),
    "curl -F video=@clip.mp4 http://localhost:3000/embed": Plan(
        json='{"embedding": [...], "dim": 768, "model": {...}}'
    ),
    "curl -F video=@clip.mp4 -F target=3 http://localhost:3000/explain": Plan(
        json='{"label", "score", "frames", "heatmaps": {...}, "png": "<base64>"}'
    ),
    "curl http://localhost:3000/metadata": Plan(says='"model_name"'),
    "curl http://localhost:3000/readyz": Plan(),
    "curl -F video=@match.mp4 -F window_s=2 http://localhost:3000/timeline_task/submit": Plan(
        json='{"task_id": "9f1c...", "status": "pending", ...}'
    ),
    'curl "http://localhost:3000/timeline_task/status?task_id=9f1c..."': Plan(json='{"status": "in_progress", ...}'),
    'curl "http://localhost:3000/timeline_task/progress?task_id=9f1c..."': Plan(
        json='{"windows": 212, "seconds": 213.0, ...}'
    ),
    'curl "http://localhost:3000/timeline_task/get?task_id=9f1c..."': Plan(
        why="waits for the task to complete first, as the README says", json='{"segments": [...]}'
    ),
    'curl -X PUT "http://localhost:3000/timeline_task/cancel?task_id=9f1c..."': Plan(
        why="the stand-in task has completed by then: cancel answers its status (tests/test_serve_tasks.py "
        "cancels running ones)",
        json='{"status": "canceled", ...}',
    ),
    "export STADAPTER_API_TOKEN=$(openssl rand -hex 16)": Plan(),
    "bentoml serve": Plan(how="server"),
    'curl -H "Authorization: Bearer $STADAPTER_API_TOKEN" -F video=@clip.mp4 http://localhost:3000/classify': Plan(
        says='"labels": [{"label"'  # classified: the token reached the server and the client alike
    ),
    "bentoml containerize stadapter:<version>": Plan(
        how="help", why="needs Docker and a built bento: its help", help=("bentoml", "containerize")
    ),
    "docker run --rm -p 3000:3000 stadapter:<version>": Plan(
        how="absent", why="needs Docker and the image, which CI has neither of: not run"
    ),
    "docker run --rm --gpus all -p 3000:3000 stadapter:<version>": Plan(
        how="absent", why="needs Docker, the image and a GPU: not run"
    ),
    # ---- demo
    "python -m demo --bundle runs/quickstart/bundle": Plan(
        how="demo", shows=("Demo running at http://127.0.0.1:7860/  (Ctrl+C to stop)",)
    ),
    "STADAPTER_UI=1 bentoml serve": Plan(how="server", says="/ui/"),  # the page its note names answers
}


README_TEXT = " ".join(Path(__file__).resolve().parents[1].joinpath("README.md").read_text().split())  # one line


def section_commands(section: str) -> list:
    return [c for b in readme_blocks(section) if b.lang == "bash" for c in commands(b)]


def test_every_readme_command_has_a_plan_and_every_plan_a_command():
    """A command changed in the README fails here until its plan (how it runs, what it shows) is updated."""
    written = [c.text for s in SECTIONS for c in section_commands(s)]
    assert sorted(set(written) - set(PLANS)) == [], "README commands without a plan"
    assert sorted(set(PLANS) - set(written)) == [], "plans for commands the README no longer has"
    for text, plan in PLANS.items():
        runs = plan.how in ("run", "server", "demo") and not plan.extra
        assert runs or plan.why, f"{text}: say why it does not simply run"
        notes = " ".join(" ".join(c.notes) for s in SECTIONS for c in section_commands(s) if c.text == text)
        for shown in plan.shows:
            assert shown in notes, f"the README's notes of {text!r} no longer show {shown!r}"
        shown = not plan.json or plan.json in notes or plan.json in README_TEXT
        assert shown, f"the README no longer shows {plan.json}"


def test_what_the_readme_says_of_bentoml_serve_is_bentomls_default():
    """'listens on port 3000 of every network interface': BentoML's own defaults (tests bind loopback only)."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    assert (BentoMLContainer.http.host.get(), BentoMLContainer.http.port.get()) == ("0.0.0.0", 3000)


@pytest.fixture(scope="module")
def world(tmp_path_factory, synthetic_data, trained_bundle, tiny_bundle):
    return make_world(tmp_path_factory.mktemp("readme") / "world", synthetic_data, trained_bundle, tiny_bundle)


@pytest.fixture
def shell(world, tmp_path):
    """A section's shell session in its own copy of the stand-in folder; its servers stop with it."""
    session = Shell(Path(shutil.copytree(world, tmp_path / "folder", symlinks=True)))
    try:
        yield session
    finally:
        session.stop()


def check(shell: Shell, command, plan: Plan, result) -> None:
    """The exit code, the README's output lines, its JSON shape, the words and files the plan names."""
    where = f"README command: {command.text}\n{result.text[-3000:]}"
    assert result.code in plan.codes, where
    assert "Traceback" not in result.text, where
    for shown in plan.shows:
        assert pattern(shell.substitute(shown), plan.any_number).search(result.text), f"{shown!r} not printed\n{where}"
    if plan.says:
        assert plan.says in result.text, where
    for name in plan.files:
        assert (shell.cwd / name).is_file(), f"{name} not written\n{where}"
    if plan.json:
        text = (shell.cwd / plan.files[0]).read_text() if plan.files else result.out
        for line in [line for line in text.splitlines() if line.strip()]:
            missing = shape_keys(plan.json) - json_keys(json.loads(line))
            assert not missing, f"keys {sorted(missing)} missing in {line[:300]}\n{where}"


def run_command(shell: Shell, command):
    """One README command, as its plan says; the Result where it ran to its end."""
    plan = PLANS[command.text]
    if plan.clears:
        target = shell.cwd / plan.clears
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    if plan.how == "absent":
        return None
    if plan.how == "help":
        done = subprocess.run([*plan.help, "--help"], cwd=shell.cwd, env=shell.env, capture_output=True, text=True)
        assert done.returncode == 0 and "Usage" in done.stdout, done.stderr
        return None
    if plan.how in ("server", "demo"):
        running = shell.start(command.text, plan.how)
        text = running.log.read_text()
        for shown in plan.shows:
            assert pattern(shell.substitute(shown)).search(text), f"{shown!r} not printed:\n{text[-2000:]}"
        if plan.says:
            url = next(n for n in command.notes if plan.says in n).split("open ", 1)[1]
            assert httpx.get(shell.substitute(url), timeout=30).status_code == 200, url
        return None
    if plan.how in ("parse", "torchrun"):
        args = parse(command.text)
        if plan.how == "parse":
            return None
        result = shell.run("python -m train " + shlex.join(args), plan.extra)  # one process, on the CPU
    else:
        if "timeline_task/get" in command.text:
            wait_for_task(shell)
        result = shell.run(command.text, plan.extra)
        if "timeline_task/submit" in command.text:
            shell.task_id = json.loads(result.out)["task_id"]
    check(shell, command, plan, result)
    return result


def parse(text: str) -> list[str]:
    """The command's arguments parse, by torchrun's parser and ours (train, stadapter-predict); the training
    arguments of a torchrun command."""
    argv = shlex.split(text)
    if argv[0] == "torchrun":
        from torch.distributed.run import get_args_parser

        launch = get_args_parser().parse_args(argv[1:])
        assert launch.module and launch.training_script == "train", text
        argv = ["python", "-m", "train", *launch.training_script_args]
    if argv[:3] == ["python", "-m", "train"]:
        from train.cli import build_parser

        build_parser().parse_args(argv[3:])
        return argv[3:]
    assert argv[0] == "stadapter-predict", f"no parser for {text}"
    from predict.cli import build_parser

    build_parser().parse_args(argv[1:])
    return argv[1:]


def wait_for_task(shell: Shell, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = shell.run(f'curl -s "http://localhost:3000/timeline_task/status?task_id={shell.task_id}"')
        if json.loads(status.out)["status"] not in ("pending", "in_progress"):
            return
        time.sleep(0.5)
    raise AssertionError("the task did not end")


def run_section(shell: Shell, section: str, python_names=None) -> dict[int, dict]:
    """Every block of a section in order: bash commands by their plans, Python blocks executed in one
    session (which starts with the names `python_names(shell)` gives), a text block after a command whose
    plan says so checked as its output; the namespaces of the Python blocks, by their place in the section."""
    namespaces, shown_below, session = {}, None, None
    for n, block in enumerate(readme_blocks(section)):
        if block.lang == "bash":
            for command in commands(block):
                result = run_command(shell, command)
                shown_below = result if PLANS[command.text].output_block else shown_below
        elif block.lang == "python":  # one Python session a section, as the blocks read on from each other
            session = session if session is not None else (python_names(shell) if python_names else {})
            namespaces[n] = dict(shell.run_python(block, session))
        elif block.lang == "text" and shown_below is not None:
            printed, shown_below = shown_below.text, None
            for line in block.text.splitlines():
                if line != "...":
                    assert pattern(line, any_number=True).search(printed), f"{line!r} not printed:\n{printed}"
    return namespaces


# ----------------------------------------------------------------------------- the sections


@pytest.mark.slow
def test_walkthrough(shell):
    """The real path in five commands: check the list, train, export (with --trt's refusal), serve, the page."""
    run_section(shell, "walkthrough")
    assert (shell.cwd / "k400" / "train_clean.txt").read_text().splitlines() == [
        "abseiling/-3B32lodo2M_000059_000069.mp4 0",
        "air drumming/--nQbRBEz2s_000104_000114.mp4 1",
    ]


@pytest.mark.slow
def test_data(shell):
    from stadapter_deploy.video.listfile import read_list_entries

    run_section(shell, "data")
    example = next(b for b in readme_blocks("data") if b.lang == "text")
    (shell.cwd / "example.txt").write_text(example.text)  # the README's example lines, by the one parser
    assert [(e.path, e.label) for e in read_list_entries(shell.cwd / "example.txt", 400)] == [
        ("abseiling/-3B32lodo2M_000059_000069.mp4", 0),
        ("air drumming/--nQbRBEz2s_000104_000114.mp4", 1),
    ]
    synthetic = shell.cwd / "runs" / "synthetic-data"  # make_synthetic_dataset("runs/synthetic-data")
    assert len((synthetic / "train.txt").read_text().splitlines()) == 600
    assert len((synthetic / "val.txt").read_text().splitlines()) == 120


@pytest.mark.slow
def test_train(shell):
    """Every training command, the long ones cut to 1 epoch; the expected output's lines, figures aside."""
    run_section(shell, "train")
    manifest = json.loads((shell.cwd / "bundles" / "ucf101" / "manifest.json").read_text())
    assert manifest["preprocessing"]["size"] == 48  # "the bundle resizes to" the input size the file holds


def stand_in_names(shell: Shell) -> dict:
    """Names the README's Python blocks use without making them: clips for predict(), the videos of an
    index and their embeddings."""
    import numpy as np

    from stadapter_deploy import load_predictor

    predictor = load_predictor(shell.cwd / "bundles" / "k400")
    videos = [str(shell.cwd / name) for name in ("clip.mp4", "a.mp4", "video.mp4")]
    return {
        "clips": np.zeros((2, *predictor.input_shape), np.float32),
        "videos": videos,
        "embeddings": np.stack([predictor.embed(v) for v in videos]),
    }


@pytest.mark.slow
def test_export(shell):
    """Every export command (--trt's refusal on CI), then the Python blocks on the bundle they wrote."""
    names = run_section(shell, "export", stand_in_names)
    first, second = (names[n] for n in sorted(names))
    assert first["result"].labels and first["logits"].shape[0] == 2
    assert second["embedding"].ndim == 1 and (shell.cwd / "why.png").read_bytes()[:4] == b"\x89PNG"
    assert second["explanation"].heatmaps.shape[0] == second["explanation"].frames.shape[0]


@pytest.mark.slow
def test_predict(shell):
    """Folder, list, timeline; a live stream and a cluster CI does not have: their refusal lines."""
    names = run_section(shell, "predict")
    (timeline,) = names.values()
    assert timeline["segments"] and set(timeline["segments"][0].to_dict()) == {"start_s", "end_s", "labels", "frames"}
    entry = next(b for b in readme_blocks("predict") if b.lang == "yaml").text.split("entrypoint: ", 1)[1]
    parse(entry.splitlines()[0])  # the RayJob's entrypoint is a command stadapter-predict takes


@pytest.mark.slow
def test_serve(shell):
    """The service's blocks against real servers: the classify, batch, timeline and task routes with their
    shown JSON, BentoML's client, the token; the image commands' help."""
    names = run_section(shell, "serve")
    (client,) = names.values()
    assert len(client["result"]["labels"]) == 3 and len(client["results"]) == 2


@pytest.mark.slow
def test_demo(shell):
    """The page on a bundle with the README's client call, then the page mounted in the service."""
    names = run_section(shell, "demo")
    (client,) = names.values()
    assert set(client["top5"]) == {"label", "confidences"} and client["top5"]["confidences"]
