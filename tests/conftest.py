import pytest


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """A verified tiny model bundle (safetensors + model.onnx), shared by the whole session; treat as read-only."""
    from helpers import make_tiny_bundle

    return make_tiny_bundle(tmp_path_factory.mktemp("tiny-bundle"))
