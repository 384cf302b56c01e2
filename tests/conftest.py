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
