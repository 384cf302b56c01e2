"""The one settings system: each setting read from its variable in one place, bad values refused in one line,
the README's table made from the fields, and the decode workers sized to fit the machine's memory."""

from __future__ import annotations

import pytest

from serve.settings import Settings, load_settings
from stadapter_deploy.errors import ConfigError
from stadapter_deploy.settings import read_settings, settings_table
from stadapter_deploy.video.limits import DecodeLimits


def test_settings_nest_and_read_each_variable_once(tiny_bundle):
    env = {"STADAPTER_BUNDLE": str(tiny_bundle), "STADAPTER_MAX_TASKS": "3", "STADAPTER_MAX_PIXELS": "1000"}
    settings = load_settings(env)
    assert settings.max_tasks == 3 and settings.decode == DecodeLimits(max_pixels=1000)
    assert read_settings(DecodeLimits, env) == settings.decode  # the same type, read the same way
    for bad, words in [({"STADAPTER_MAX_TASKS": "0"}, "at least 1"), ({"STADAPTER_MAX_FRAMES": "many"}, "number")]:
        with pytest.raises(ConfigError, match=words) as refused:
            load_settings({**env, **bad})
        assert "\n" not in str(refused.value) and next(iter(bad)) in str(refused.value)


def test_the_table_lists_every_variable_of_nested_settings():
    table = settings_table(Settings)
    for variable in ("STADAPTER_MAX_TASKS", "STADAPTER_DECODE_MEMORY_MB", "STADAPTER_MAX_PIXELS"):
        assert f"`{variable}`" in table
    assert "s3cret" not in repr(Settings(api_token="s3cret"))  # a secret is never in a repr, so never in a log


def test_decode_workers_default_to_what_fits_in_half_the_memory(monkeypatch):
    import serve.settings as settings_module

    settings = Settings()
    bound = settings.decode.decode_bound_bytes(24, 224)  # a 3-view recipe at the largest frames allowed
    assert 1.5 * 2**30 < bound < 2 * 2**30
    for memory, workers in [(64 * 2**30, 2), (3 * bound, 1), (bound, 1)]:
        monkeypatch.setattr(settings_module, "memory_bytes", lambda memory=memory: memory)
        assert settings.decode_processes(24, 224) == workers, memory
    assert Settings(decode_workers=5).decode_processes(24, 224) == 5  # what is set wins
