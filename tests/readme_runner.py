"""Runs the README's command blocks against tiny stand-ins (tests/test_readme_blocks.py says what and how).

- `readme_blocks(section)`: the fenced blocks of a README section, in order.
- `commands(block)`: its commands, continuation lines joined, each with the comment lines under it.
- `make_world(root, ...)`: the stand-in folder: every file and folder the README's commands name, tiny.
- `Shell`: one section's shell session in a copy of that folder: runs a command as a user would type it,
  with the substitutions listed in SUBSTITUTIONS, and holds the servers and demos it started.
- `pattern(text)`: a README output line as a regex (`<name>`: one word; `...`: anything; numbers: any
  number where the README shows a full run's figures and the test a cut-down one).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

SUBSTITUTIONS = """\
- paths: each section runs in its own copy of the stand-in folder, where every path the README names is a
  tiny file of the real format; `/data/` (data.toml) and `/shared/` are folders of that copy.
- ports: `bentoml serve` gets a free port on 127.0.0.1 through BENTOML_PORT and BENTOML_HOST (tests listen on
  loopback only), `python -m demo` one through `--port`; URLs naming :3000 or :7860 are rewritten to them.
- STADAPTER_BUNDLE, where a command leaves it unset, is the copy's runs/quickstart/bundle: the bundle
  `bentoml serve` takes by default (from the repository root).
- task ids: `task_id=9f1c...` is the id the submit before it answered.
- `stadapter-export` and `python -m train` run in this process, through the function their command calls
  (the same parsing and the same code), so each does not pay for importing torch again; the rest are
  subprocesses (the list checker and stadapter-predict too: in this process their decode workers would come
  from a fork server started in another folder, where the README's relative paths do not resolve).
- `export VAR=...` holds for the rest of the section, as in a shell.
"""


# ----------------------------------------------------------------------------- reading the README


def readme_section(name: str) -> str:
    text = README.read_text()
    match = re.search(rf"<!-- section: {name} -->\n(.*?)<!-- /section: {name} -->", text, re.S)
    assert match, f"README.md has no section {name!r}"
    return match.group(1)


@dataclass(frozen=True)
class Block:
    lang: str
    text: str  # dedented


def readme_blocks(section: str) -> list[Block]:
    blocks = []
    for match in re.finditer(r"^([ \t]*)```(\w+)\n(.*?)^[ \t]*```", readme_section(section), re.S | re.M):
        indent = len(match.group(1))
        lines = [line[indent:] if line[:indent].isspace() else line for line in match.group(3).splitlines()]
        blocks.append(Block(match.group(2), "\n".join(lines) + "\n"))
    return blocks


@dataclass
class Command:
    text: str  # the command as typed: continuation lines joined, its trailing comment dropped
    notes: list[str] = field(default_factory=list)  # its trailing comment and the comment lines under it


TRAILING_COMMENT = re.compile(r"\s{2,}#\s?(.*)$")


def commands(block: Block) -> list[Command]:
    """The commands of a bash block; a comment line belongs to the command above it until a blank line."""
    found: list[Command] = []
    pending: list[str] = []  # physical lines of a command continued with a backslash
    notes: list[str] = []
    current: Command | None = None
    for line in block.text.splitlines():
        stripped = line.strip()
        if not stripped:
            current = None
            continue
        if stripped.startswith("#") and not pending:
            if current is not None:
                current.notes.append(stripped.lstrip("#").strip())
            continue
        match = TRAILING_COMMENT.search(stripped)
        if match:
            notes.append(match.group(1).strip())
            stripped = stripped[: match.start()].rstrip()
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        current = Command(" ".join([*pending, stripped]), notes)
        found.append(current)
        pending, notes = [], []
    return found


def pattern(text: str, any_number: bool = False) -> re.Pattern:
    """A README output line as a regex: `<name>` is one word, `...` anything, and with any_number every
    number stands for any number (the README shows a full run, the test runs a cut-down one)."""
    parts = re.split(r"(<[\w ]+>|\.\.\.|\d+(?:\.\d+)?(?:e[+-]\d+)?)", text)
    out = []
    for part in parts:
        if re.fullmatch(r"<[\w ]+>", part):
            out.append(r"\S+")
        elif part == "...":
            out.append(r".*?")
        elif any_number and re.fullmatch(r"\d+(?:\.\d+)?(?:e[+-]\d+)?", part):
            out.append(r"\d+(?:\.\d+)?(?:e[+-]\d+)?")
        else:
            out.append(re.escape(part))
    return re.compile("".join(out))


def shape_keys(shape: str) -> set[str]:
    """The keys a README JSON shape names: `"key":` pairs and the bare names of `{"a", "b"}` sets."""
    keys = set(re.findall(r'"(\w+)"\s*:', shape))
    for group in re.findall(r"\{([^{}:]*)\}", shape):  # {"start_s", "end_s", ...} without values
        keys |= set(re.findall(r'"(\w+)"', group))
    return keys


def json_keys(value) -> set[str]:
    """Every key of a JSON value, at any depth."""
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in json_keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in json_keys(v)}
    return set()


# ----------------------------------------------------------------------------- the stand-in folder


def write_clip_file(path: Path, size: int, patch: int, seed: int) -> Path:
    """A tiny CLIP ViT in OpenAI's release format (TorchScript archive, fp16), as ViT-B-16.pt is."""
    from weight_files import clip_backbone, write_torchscript

    _, backbone = clip_backbone(patch=patch, size=size, width=64, layers=2, seed=seed)
    return write_torchscript(path, backbone)


def make_world(root: Path, synthetic_data: Path, trained_bundle: Path, tiny_bundle: Path) -> Path:
    """Every file and folder the README's commands name, as tiny files of the real formats."""
    import torch

    from stadapter_deploy import build_model
    from stadapter_deploy.model import is_trainable_name, save_checkpoint
    from stadapter_deploy.recipes import class_names, get_recipe
    from stadapter_deploy.video.synthetic import write_motion_video

    root.mkdir(parents=True, exist_ok=True)
    clip = lambda name, label, seed, frames=16: write_motion_video(root / name, label, seed, num_frames=frames)
    for i, name in enumerate(("clip.mp4", "video.mp4", "query.mp4", "a.mp4", "b.webm")):
        clip(name, i % 6, 40 + i)
    clip("long.mp4", 2, 50, frames=48)  # 6 s: a few timeline windows
    clip("match.mp4", 3, 51, frames=48)

    # k400/: the list of the walkthrough (the README's own example entries), a broken file and a missing one
    videos = root / "k400" / "videos"
    entries = ["abseiling/-3B32lodo2M_000059_000069.mp4 0", "air drumming/--nQbRBEz2s_000104_000114.mp4 1"]
    for n, entry in enumerate(entries):
        write_motion_video(videos / entry.rsplit(" ", 1)[0], label=n, seed=60 + n)
    (videos / "broken.mp4").write_bytes(b"\x00" * 64)
    (root / "k400" / "train.txt").write_text("\n".join([*entries, "broken.mp4 2", "missing.mp4 3"]) + "\n")

    # data/: what the README's data.toml names under /data/ (4 train and 2 val clips a dataset)
    source = sorted((synthetic_data / "videos").glob("*.mp4"))
    for dataset, folders, lists in (
        ("k400", ("videos_train", "videos_val"), ("train_clean.txt", "val_clean.txt")),
        ("ssv2", ("videos", "videos"), ("train.txt", "val.txt")),
        ("ucf101", ("videos", "videos"), ("train1.txt", "val1.txt")),
    ):
        base = root / "data" / dataset
        for folder, listed, picks in zip(folders, lists, (source[:4], source[4:6]), strict=True):
            (base / folder).mkdir(parents=True, exist_ok=True)
            for p in picks:
                shutil.copy(p, base / folder / p.name)
            (base / listed).write_text("".join(f"{p.name} {i % 6}\n" for i, p in enumerate(picks)))
    (root / "data" / "ucf101" / "classes.txt").write_text("".join(f"action {i}\n" for i in range(101)))
    toml = next(b.text for b in readme_blocks("train") if b.lang == "toml")
    (root / "data.toml").write_text(toml.replace('"/data/', f'"{root}/data/'))

    # weights: tiny CLIP files named as OpenAI's, a reference checkpoint-11.pth for the first
    b16 = write_clip_file(root / "ViT-B-16.pt", size=32, patch=8, seed=1)
    write_clip_file(root / "ViT-L-14-336px.pt", size=48, patch=8, seed=2)
    torch.manual_seed(3)
    k400 = build_model(clip=b16, adapter_layout="vit_b16_adapter12x384", adapter_width=16, num_classes=400)
    trainable = {k: v for k, v in k400.state_dict().items() if is_trainable_name(k)}
    torch.save({"model": trainable, "epoch": 11}, root / "checkpoint-11.pth")

    # runs/ and bundles/: what sections read without making it first
    runs, bundles = root / "runs", root / "bundles"
    shutil.copytree(synthetic_data, runs / "synthetic-data")
    shutil.copytree(trained_bundle.parent / "checkpoint", runs / "synthetic" / "final")
    k400_pre = get_recipe("k400").preprocessing.replace(size=32)
    extra = {"dataset": "k400", "preprocessing": k400_pre.to_dict(), "class_names": class_names("k400")}
    save_checkpoint(k400, runs / "k400" / "final", extra=extra)
    shutil.copytree(trained_bundle, runs / "quickstart" / "bundle")
    shutil.copytree(trained_bundle, bundles / "synthetic")
    shutil.copytree(tiny_bundle, bundles / "k400")
    shutil.copytree(tiny_bundle, root / "shared" / "bundles" / "k400")
    (root / "shared" / "archive").mkdir(parents=True)
    shutil.copy(root / "clip.mp4", root / "shared" / "archive")
    (root / "bentofile.yaml").symlink_to(ROOT / "bentofile.yaml")  # `bentoml serve` reads it where it runs
    return root


# ----------------------------------------------------------------------------- running commands


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


IN_PROCESS = {  # argv prefix -> the function the command calls
    ("stadapter-export",): "export.cli:main",
    ("python", "-m", "train"): "train.cli:main",
}


def entry_point(argv: list[str]):
    for prefix, target in IN_PROCESS.items():
        if tuple(argv[: len(prefix)]) == prefix:
            module, name = target.split(":")
            return getattr(__import__(module, fromlist=[name]), name), argv[len(prefix) :]
    return None, argv


def split_assignments(command: str) -> tuple[dict, str]:
    """`A=1 B=2 cmd ...` -> ({A: 1, B: 2}, "cmd ..."); values without shell expansion only."""
    env = {}
    words = shlex.split(command)
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    return env, shlex.join(words)


@dataclass
class Background:
    process: subprocess.Popen
    log: Path
    url: str


class Shell:
    """One README section's shell session, in its own copy of the stand-in folder."""

    def __init__(self, folder: Path):
        self.cwd = folder
        bin_dir = str(Path(sys.executable).parent)
        self.env = {
            **os.environ,
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "STADAPTER_BUNDLE": str(folder / "runs" / "quickstart" / "bundle"),
            "BENTOML_DO_NOT_TRACK": "True",
            "GRADIO_ANALYTICS_ENABLED": "False",
            "PYTHONUNBUFFERED": "1",
        }
        self.server: Background | None = None  # the running `bentoml serve`
        self.demo: Background | None = None  # the running `python -m demo`
        self.task_id: str | None = None

    # substitutions ------------------------------------------------------------------------------

    def substitute(self, text: str) -> str:
        if self.server is not None:
            text = re.sub(r"(localhost|127\.0\.0\.1):3000", self.server.url.removeprefix("http://"), text)
        if self.demo is not None:
            text = re.sub(r"(localhost|127\.0\.0\.1):7860", self.demo.url.removeprefix("http://"), text)
        if self.task_id is not None:
            text = text.replace("task_id=9f1c...", f"task_id={self.task_id}")
        return text.replace(" /shared/", f" {self.cwd}/shared/")

    # running ------------------------------------------------------------------------------------

    def run(self, command: str, extra: tuple[str, ...] = (), timeout_s: float = 300) -> Result:
        """Run a command as typed (plus `extra` arguments), in-process where IN_PROCESS says so."""
        command = self.substitute(command)
        if command.startswith("export "):
            return self.export(command)
        assigned, rest = split_assignments(command) if "$(" not in command else ({}, command)
        argv = [*shlex.split(rest), *extra] if "$" not in rest else None
        function, args = entry_point(argv) if argv else (None, None)
        if function is not None:
            return self.in_process(function, args, assigned)
        line = command + "".join(f" {shlex.quote(a)}" for a in extra)
        proc = subprocess.run(
            ["bash", "-c", line], cwd=self.cwd, env=self.env, capture_output=True, text=True, timeout=timeout_s
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def export(self, command: str) -> Result:
        """`export A=...`: the variable holds for the rest of the section, as in a shell."""
        proc = subprocess.run(
            ["bash", "-c", f"{command}\nenv -0"], cwd=self.cwd, env=self.env, capture_output=True, timeout=60
        )
        pairs = (item.split(b"=", 1) for item in proc.stdout.split(b"\0") if b"=" in item)
        self.env = {k.decode(): v.decode() for k, v in pairs}
        return Result(proc.returncode, "", proc.stderr.decode())

    def in_process(self, function, args: list[str], assigned: dict) -> Result:
        out, err = io.StringIO(), io.StringIO()
        saved_env, saved_cwd = dict(os.environ), os.getcwd()
        os.environ.clear()
        os.environ.update({**self.env, **assigned})
        os.chdir(self.cwd)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    code = function(args)
                except SystemExit as e:  # argparse
                    code = e.code if isinstance(e.code, int) else 2
        finally:
            os.chdir(saved_cwd)
            os.environ.clear()
            os.environ.update(saved_env)
        return Result(int(code or 0), out.getvalue(), err.getvalue())

    def start(self, command: str, kind: str) -> Background:
        """A command that runs until stopped: `bentoml serve` (kind "server") or `python -m demo` ("demo"),
        on a free loopback port; returns once it answers."""
        from stadapter_deploy.net import free_port

        self.stop(kind)
        port = free_port()
        assigned, line = split_assignments(self.substitute(command))
        env = {**self.env, **assigned}
        if kind == "server":
            env |= {"BENTOML_PORT": str(port), "BENTOML_HOST": "127.0.0.1", "BENTOML_HOME": str(self.cwd / ".bentoml")}
            (self.cwd / "tmp").mkdir(exist_ok=True)
            env["TMPDIR"] = str(self.cwd / "tmp")
        else:
            line += f" --port {port}"
        log = self.cwd / f"{kind}-{port}.log"
        with open(log, "wb") as f:
            process = subprocess.Popen(
                ["bash", "-c", f"exec {line}"],
                cwd=self.cwd,
                env=env,
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        running = Background(process, log, f"http://127.0.0.1:{port}")
        setattr(self, kind, running)
        self.wait(running, kind)
        return running

    def wait(self, running: Background, kind: str, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if running.process.poll() is not None:
                code, log = running.process.returncode, running.log.read_text()[-3000:]
                raise AssertionError(f"{kind} exited ({code}):\n{log}")
            if kind == "demo" and "Demo running at" in running.log.read_text():
                return
            if kind == "server":
                try:
                    if httpx.get(f"{running.url}/readyz", timeout=2).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
            time.sleep(0.3)
        raise AssertionError(f"{kind} not ready after {timeout_s:g} s:\n{running.log.read_text()[-3000:]}")

    def stop(self, kind: str | None = None) -> None:
        from serve.local import stop_server

        for name in (kind,) if kind else ("server", "demo"):
            running = getattr(self, name)
            if running is not None:
                stop_server(running.process)  # its process group, then whatever of it is left
                setattr(self, name, None)

    def run_python(self, block: Block, namespace: dict) -> dict:
        """Execute a Python block in the section's folder, in `namespace` (kept from block to block)."""
        saved = os.getcwd()
        os.chdir(self.cwd)
        try:
            exec(compile(self.substitute(block.text), "README.md", "exec"), namespace)
        finally:
            os.chdir(saved)
        return namespace
