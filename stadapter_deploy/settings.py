"""The one settings system: each setting is a dataclass field that states its default, its environment
variable, its lowest value and its meaning, once; `read_settings` is the one place that reads the
environment. Settings types nest (the service's settings hold the decode limits), and the README's
tables are made from the fields themselves (`settings_table`).

Library code never reads the environment: an app reads its settings here and passes them down.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import field
from pathlib import Path

from .errors import ConfigError


def setting(default, env: str, meaning: str, low: float | None = None, secret: bool = False, shown: str = ""):
    """A settings field. `shown`: how the README shows the default, where the value itself would mislead."""
    meta = {"env": env, "meaning": meaning, "low": low, "shown": shown}
    return field(default=default, repr=not secret, metadata=meta)


def nested(kind: type):
    """A settings field that holds another settings type (read from its own variables)."""
    return field(default_factory=kind, metadata={"nested": True})


def env_name(kind: type, name: str) -> str:
    """The environment variable of field `name` of settings type `kind` (for messages that say what to set)."""
    return next(f.metadata["env"] for f in dataclasses.fields(kind) if f.name == name)


def read_settings(kind: type, environ: typing.Mapping[str, str] = os.environ):
    """An instance of settings type `kind` from the environment: unset or empty variables keep their
    defaults; ConfigError (one line) on the first bad value."""
    hints = typing.get_type_hints(kind)
    values = {}
    for f in dataclasses.fields(kind):
        if f.metadata.get("nested"):
            values[f.name] = read_settings(hints[f.name], environ)
            continue
        raw = environ.get(f.metadata["env"], "").strip()
        if raw:
            values[f.name] = _parse(f, _plain(hints[f.name]), raw)
    return kind(**values)


def _plain(hint) -> type:
    """int for `int | None` and the like."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def _parse(f: dataclasses.Field, kind: type, raw: str):
    name, low = f.metadata["env"], f.metadata["low"]
    if kind is bool:
        if raw.lower() not in ("0", "1", "true", "false", "yes", "no"):
            raise ConfigError(f"{name}={raw!r} must be 1 or 0")
        return raw.lower() in ("1", "true", "yes")
    if kind in (str, Path):
        return kind(raw)
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a {'whole ' if kind is int else ''}number") from None
    if low is not None and value < low:
        raise ConfigError(f"{name}={raw!r} must be at least {low:g}")
    return value


def settings_table(kind: type) -> str:
    """A markdown table of every variable of `kind`, nested types included, from the fields themselves."""
    rows = ["| variable | default | what |", "|---|---|---|"]
    rows += [f"| `{f.metadata['env']}` | {_shown(f)} | {f.metadata['meaning']} |" for f in _fields(kind)]
    return "\n".join(rows)


def _fields(kind: type):
    hints = typing.get_type_hints(kind)
    for f in dataclasses.fields(kind):
        if f.metadata.get("nested"):
            yield from _fields(hints[f.name])
        else:
            yield f


def _shown(f: dataclasses.Field) -> str:
    if f.metadata["shown"]:
        return f.metadata["shown"]
    if f.default is None:
        return "(unset)"
    if isinstance(f.default, bool):
        return f"`{int(f.default)}`"
    return f"`{f.default:g}`" if isinstance(f.default, float) else f"`{f.default}`"
