"""A new user's mistakes, each one line of ours through the real entry point, and the options that work as
offered (issue 28). The quickstart's are in tests/test_quickstart.py, the README's blocks in
tests/test_readme_blocks.py."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import make_tiny_checkpoint, serve_until_it_exits

ROOT = Path(__file__).resolve().parents[1]


def run(module: str, *args, cwd=ROOT, timeout=300) -> subprocess.CompletedProcess:
    """`python -m module args` in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


ENTRY_POINTS = {  # the function each command calls, run in this process: no second import of torch
    "train": "train.cli:main",
    "export": "export.cli:main",
    "predict": "predict.cli:main",
    "stadapter_deploy.video.check_list": "stadapter_deploy.video.check_list:main",
}


def call(capsys, module: str, *args, cwd: Path | None = None) -> tuple[int, str]:
    """`python -m module args` through its entry point in this process: (exit code, stderr)."""
    import importlib
    import os

    name, function = ENTRY_POINTS[module].split(":")
    main = getattr(importlib.import_module(name), function)
    capsys.readouterr()
    saved = os.getcwd()
    os.chdir(cwd or saved)
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    finally:
        os.chdir(saved)
    return code, capsys.readouterr().err


def one_line(text: str) -> str:
    """The only non-empty line of `text`, which holds no traceback."""
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in text, text[-3000:]
    return lines[0]


# ----------------------------------------------------------------------------- training


def test_a_wrong_dataset_root_is_one_line_naming_the_path_tried(synthetic_data, tmp_path, capsys):
    """The list's paths are relative to the root: a root one level off was a 14-line DataLoader traceback."""
    code, err = call(
        capsys, "train", "synthetic", "--save-dir", tmp_path / "run", "--epochs", "1", "--total-batch", "4",
        "--train-root", synthetic_data / "videos", "--train-list", synthetic_data / "train.txt",
        "--val-root", synthetic_data, "--val-list", synthetic_data / "val.txt", cwd=tmp_path,
    )  # fmt: skip
    line = one_line(err)
    assert code == 2 and line.startswith("error: none of 12 videos of")
    assert str(synthetic_data / "videos" / "videos" / "train_00000.mp4") in line and "--train-root" in line
    assert not (tmp_path / "runs").exists()  # lists given: no synthetic data generated in runs/synthetic-data


def test_videos_failing_in_a_row_stop_training_in_one_line_naming_the_skip_list(tmp_path):
    """Files that exist but do not decode (the root check passes), read by DataLoader workers whose error
    arrives wrapped in their traceback: one line, the last failure, the list of them all."""
    for i in range(8):
        (tmp_path / f"b{i}.mp4").write_text("not a video")
    (tmp_path / "list.txt").write_text("".join(f"b{i}.mp4 {i % 6}\n" for i in range(8)))
    done = run(
        "train", "synthetic", "--save-dir", tmp_path / "run", "--epochs", "1", "--total-batch", "4",
        "--train-root", tmp_path, "--train-list", tmp_path / "list.txt",
        "--val-root", tmp_path, "--val-list", tmp_path / "list.txt", "--num-workers", "1",
    )  # fmt: skip
    line = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert line.startswith("error: 20 videos in a row failed to decode (the last: ")
    assert line.endswith(f"every skipped video is listed in {tmp_path / 'run' / 'skipped_videos.txt'}")


@pytest.mark.parametrize("content", [b"\x00" * 3000, b"PK\x03\x04 not a zip at all" * 50])
def test_clip_given_a_file_that_is_not_weights_is_one_line_of_ours(synthetic_data, tmp_path, content, capsys):
    weights = tmp_path / "ViT-B-16.pt"
    weights.write_bytes(content)
    code, err = call(capsys, "train", "synthetic", "--save-dir", tmp_path / "run", "--data-root", synthetic_data,
                     "--clip", weights)  # fmt: skip
    line = one_line(err)
    assert code == 2 and str(weights) in line and "weights_only" not in line


def test_clip_given_our_own_trained_model_says_what_to_do_with_it(synthetic_data, tmp_path, capsys):
    final = make_tiny_checkpoint(tmp_path / "k400" / "final")
    for given in (final, final / "model.safetensors"):
        code, err = call(capsys, "train", "synthetic", "--save-dir", tmp_path / "run", "--data-root", synthetic_data,
                         "--clip", given)  # fmt: skip
        line = one_line(err)
        assert code == 2 and f"--pretrain {final}" in line and f"--checkpoint {final}" in line
        assert "--preset" not in line  # no preset was given: no advice about one


# ----------------------------------------------------------------------------- export


def test_a_training_checkpoint_or_run_folder_given_as_a_model_names_final(tmp_path, capsys):
    run_dir = tmp_path / "runs" / "k400"
    make_tiny_checkpoint(run_dir / "final")
    (run_dir / "checkpoint-1.pth").write_bytes(b"a training checkpoint")
    for given, what in ((run_dir / "checkpoint-1.pth", "a training checkpoint"), (run_dir, "a training run's folder")):
        code, err = call(capsys, "export", "--checkpoint", given, "--out", tmp_path / "bundle")
        line = one_line(err)
        assert code == 1 and what in line and line.endswith(f"the run's model is {run_dir / 'final'}")


def test_bench_writes_no_plot_unless_asked(tiny_bundle, tmp_path, capsys):
    code, _ = call(
        capsys, "export", "bench", tiny_bundle, "--backends", "onnxruntime-cpu", "--batches", "1", "--iters", "1",
        "--threads", "1", "--matmul-seconds", "0.1", cwd=tmp_path,
    )  # fmt: skip
    assert code == 0
    assert list(tmp_path.iterdir()) == []  # no bench_backends.png in the folder it ran in


# ----------------------------------------------------------------------------- lists


def test_one_list_rule_for_training_the_checker_and_predict(tiny_bundle, synthetic_data, tmp_path, capsys):
    """`video.mp4 one` is a label that is not a number, in the same words everywhere (predict: exit 2);
    a path with a space is a path, labelled or, for predict, unlabelled when the file exists."""
    root = tmp_path / "root"
    shutil.copytree(synthetic_data, root)
    (root / "videos" / "my clip.mp4").write_bytes((root / "videos" / "train_00000.mp4").read_bytes())
    (root / "bad.txt").write_text("videos/train_00001.mp4 1\nvideos/train_00002.mp4 one\n")
    words = "bad.txt:2: label 'one' is not an integer"

    code, err = call(capsys, "predict", "--bundle", tiny_bundle, f"@{root / 'bad.txt'}", "--no-progress")
    assert code == 2 and words in one_line(err)
    code, err = call(capsys, "train", "synthetic", "--save-dir", tmp_path / "run", "--train-root", root,
                     "--train-list", root / "bad.txt", "--val-root", root, "--val-list", root / "val.txt")  # fmt: skip
    assert code == 2 and words in one_line(err)
    code, _ = call(capsys, "stadapter_deploy.video.check_list", root / "bad.txt", "--root", root, "--num-classes",
                   "6", "--out", tmp_path / "clean.txt", "--quiet")  # fmt: skip
    report = (tmp_path / "clean.txt.dropped.tsv").read_text()
    assert code == 0 and "2\tvideos/train_00002.mp4\tlabel 'one' is not an integer" in report

    (root / "spaces.txt").write_text("videos/my clip.mp4 0\nvideos/my clip.mp4\n")
    out = tmp_path / "spaces.jsonl"
    code, _ = call(capsys, "predict", "--bundle", tiny_bundle, f"@{root / 'spaces.txt'}", "--out", out, "--no-progress")
    assert code == 0 and out.read_text().count('"labels"') == 1  # both lines name the one file: one result


def test_check_list_refuses_an_out_in_a_missing_folder_before_decoding(synthetic_data, tmp_path, capsys):
    code, err = call(capsys, "stadapter_deploy.video.check_list", synthetic_data / "train.txt", "--root",
                     synthetic_data, "--num-classes", "6", "--out", tmp_path / "nodir" / "x.txt")  # fmt: skip
    line = one_line(err)
    assert code == 2 and "the folder" in line and str(tmp_path / "nodir") in line  # before decoding: no bar


# ----------------------------------------------------------------------------- precision


def test_bf16_with_the_default_backend_picks_the_backend_that_runs_it(tiny_bundle, motion_video, tmp_path, capsys):
    """`--precision bf16` without --backend: torch on the CPU where it has BF16, in one line where it has not."""
    import json

    from predict.cli import main
    from stadapter_deploy import load_predictor
    from stadapter_deploy.hardware import cpu_has_bf16

    out = tmp_path / "bf16.jsonl"
    code = main(["--bundle", str(tiny_bundle), str(motion_video), "--precision", "bf16", "--out", str(out)])
    if cpu_has_bf16():
        assert code == 0, capsys.readouterr().err
        record = json.loads(out.read_text())
        assert (record["backend"], record["precision"]) == ("torch-cpu", "bf16")
        selection = load_predictor(tiny_bundle, precision="bf16").selection
        assert (
            selection.startswith("auto chose torch-cpu for bf16") and "onnxruntime-cpu: does not run bf16" in selection
        )
    else:
        assert code == 2
        assert "bf16 on the CPU needs AVX512-BF16 or AMX" in one_line(capsys.readouterr().err)


# ----------------------------------------------------------------------------- the page


def test_the_page_refuses_model_options_with_service_in_one_line(capsys):
    from demo.__main__ import main

    for extra in (["--bundle", "b"], ["--backend", "torch"], ["--views", "1"]):
        assert main(["--service", "http://127.0.0.1:9", *extra]) == 2
        line = one_line(capsys.readouterr().err)
        assert line.startswith("error: --service classifies with the service's own model") and extra[0] in line


@pytest.fixture(scope="module")
def three_view_bundle(tmp_path_factory):
    """A tiny bundle whose recipe takes 3 temporal views of 8 frames (as K400's does)."""
    from helpers import synthetic_meta

    from stadapter_deploy import build_model
    from stadapter_deploy.export.exporter import ExportOptions, export_bundle, load_source
    from stadapter_deploy.model import save_checkpoint
    from stadapter_deploy.preprocessing import Preprocessing

    root = tmp_path_factory.mktemp("three-views")
    pre = Preprocessing(num_frames=8, sampling_rate=2, size=32, temporal_views=3)
    checkpoint = save_checkpoint(
        build_model("tiny"), root / "checkpoint", {**synthetic_meta(), "preprocessing": pre.to_dict()}
    )
    options = ExportOptions(verify=False, progress=False)
    return export_bundle(load_source(checkpoint=checkpoint), root / "bundle", options).path


@pytest.mark.slow
def test_the_page_and_a_service_that_comes_up_late_or_wants_a_token(three_view_bundle, motion_video, tmp_path, capsys):
    """Against a service that is not up yet: a warning on stderr, and the page's model line follows the
    service once it is; a token it wants is one line naming --token; through the service the caption
    counts views and frames as in-process."""
    import os

    from demo.app import build_demo, details_markdown
    from demo.classifiers import LocalClassifier, ServiceClassifier
    from serve.local import start_server, stop_server, wait_ready
    from stadapter_deploy.errors import RequestError
    from stadapter_deploy.net import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "STADAPTER_API_TOKEN": "", "GRADIO_ANALYTICS_ENABLED": "False"}
    demo = subprocess.Popen(
        [sys.executable, "-m", "demo", "--service", url, "--port", str(free_port())],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        warning = demo.stderr.readline()
        assert warning.startswith(f"warning: {url} did not answer") and "starts anyway" in warning
    finally:
        demo.terminate()
        demo.wait(timeout=30)
    late = ServiceClassifier(url)
    assert "does not answer yet" in late.describe()
    page = build_demo(late, subtitle=late.describe)  # as `python -m demo --service` builds it
    (header,) = [b for b in page.blocks.values() if getattr(b, "elem_id", None) == "header"]
    (on_load,) = [f.fn for f in page.fns.values() if header in f.outputs]  # run each time a browser loads the page
    assert "does not answer yet" in on_load()

    server_env = {  # the system's TMPDIR: socket paths under this test's long folder name outgrow their limit
        "STADAPTER_BUNDLE": str(three_view_bundle),
        "STADAPTER_API_TOKEN": "the-token",
        "BENTOML_HOME": str(tmp_path / "bentoml"),
    }
    process, _ = start_server(server_env, tmp_path / "server.log", port=port)
    try:
        wait_ready(process, url, tmp_path / "server.log")
        assert "needs its API token" in late.describe()  # it answers now: what it wants
        assert "needs its API token" in on_load()  # and the page, loaded again, says so
        from demo.__main__ import main as demo_main

        capsys.readouterr()
        assert demo_main(["--service", url, "--port", str(free_port())]) == 2  # refused before the page starts
        line = one_line(capsys.readouterr().err)
        assert "--token" in line and "Authorization" not in line
        with pytest.raises(RequestError) as told:
            asyncio.run(late.classify(motion_video, 3))
        assert told.value.status == 401 and "start the page with --token" in str(told.value)

        served = ServiceClassifier(url, token="the-token")
        assert served.describe().startswith("Model `ViT")  # the model's name, now that it answers
        through = asyncio.run(served.classify(motion_video, 3))
        local = asyncio.run(LocalClassifier(three_view_bundle).classify(motion_video, 3))
        assert through.frames.shape[:2] == local.frames.shape[:2] == (3, 8)
        assert through.frame_indices == local.frame_indices
        for result in (through, local):
            assert "3 view(s) x 8 frames" in details_markdown(result)
    finally:
        stop_server(process)


# ----------------------------------------------------------------------------- serve


@pytest.mark.slow
def test_serve_refuses_a_copy_whose_model_onnx_was_cut_and_leaves_nothing(tiny_bundle, tmp_path):
    """The folder named is checked on every start, before any earlier snapshot counts; a failed start
    leaves no private folder behind."""
    copy = shutil.copytree(tiny_bundle, tmp_path / "copy")
    data = (copy / "model.onnx").read_bytes()
    (copy / "model.onnx").write_bytes(data[:1000])
    (tmp_path / "tmp").mkdir()
    env = {"STADAPTER_BUNDLE": str(copy), "BENTOML_HOME": str(tmp_path / "bh"), "TMPDIR": str(tmp_path / "tmp")}
    result = serve_until_it_exits(env)
    lines = [line for line in result.stderr.splitlines() if "stadapter serve: cannot start" in line]
    assert result.returncode != 0 and len(lines) == 1 and "model.onnx" in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert list((tmp_path / "tmp").iterdir()) == []  # no snapshot left after the failed start
