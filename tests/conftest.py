import pytest


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
def server(tiny_bundle, tmp_path_factory):
    """One running `bentoml serve` over the tiny bundle for the whole session, with the demo page at /ui;
    yields (url, its TMPDIR). Stopped by its process group."""
    from helpers import SERVE_MAX_UPLOAD_MB

    from serve.local import ServerFailed, start_server, stop_server, wait_ready

    root = tmp_path_factory.mktemp("serve")
    server_tmp = root / "tmp"
    server_tmp.mkdir()
    env = {
        "STADAPTER_BUNDLE": str(tiny_bundle),
        "STADAPTER_MAX_UPLOAD_MB": str(SERVE_MAX_UPLOAD_MB),
        "STADAPTER_DECODE_WORKERS": "4",  # decodes finish in fours, so they meet at the model
        "STADAPTER_MAX_VIDEOS": "4",
        "STADAPTER_UI": "1",  # the demo page at /ui, calling the service in-process
        "TMPDIR": str(server_tmp),  # every temp file the server makes lands here, so a test can look
        # Each `bentoml serve` empties $BENTOML_HOME/prometheus_multiproc_dir when it starts: a private
        # home keeps another server on this machine from wiping this one's metrics.
        "BENTOML_HOME": str(root / "bentoml"),
    }
    log_path = root / "server.log"
    process, url = start_server(env, log_path)
    try:
        try:
            wait_ready(process, url, log_path)
        except ServerFailed as e:
            pytest.fail(str(e))
        files = sorted(p for p in server_tmp.rglob("*") if p.is_file())
        (root / "baseline.txt").write_text("\n".join(map(str, files)))
        yield url, server_tmp
    finally:
        stop_server(process)
