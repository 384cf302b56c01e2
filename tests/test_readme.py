"""The README's first commands are the two a user needs, and CI runs exactly the README's test command."""

from __future__ import annotations

import re
import stat
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def first_code_block(text: str) -> list[str]:
    match = re.search(r"```bash\n(.*?)```", text, re.S)
    assert match, "README.md has no bash code block"
    return [line for line in match.group(1).splitlines() if line.strip() and not line.startswith("#")]


def test_readme_starts_with_quickstart_and_test_commands():
    text = (ROOT / "README.md").read_text()
    assert text.index("```bash") < text.index("\n## "), "the commands must come before the first section"
    commands = first_code_block(text)
    assert commands[0] == "./quickstart.sh"
    assert commands[1].endswith('pip install -e ".[cpu,ray,test]" && python -m pytest -x -q')  # Ray: never skipped
    assert len(commands) == 2


def test_ci_runs_the_readme_test_command_verbatim():
    readme_test_command = first_code_block((ROOT / "README.md").read_text())[1]
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    runnable = [line for line in ci_lines if line and not line.startswith("#")]
    assert runnable[-1] == readme_test_command


def test_quickstart_is_executable_and_strict():
    script = ROOT / "quickstart.sh"
    assert script.stat().st_mode & stat.S_IXUSR
    assert "set -euo pipefail" in script.read_text()


def test_the_service_settings_table_is_the_one_in_settings():
    """The README's table of variables is `settings_table()`: each default is stated once, in serve/settings.py."""
    from serve.settings import settings_table

    text = (ROOT / "README.md").read_text()
    table = text.split("<!-- settings table -->\n", 1)[1].split("\n<!-- /settings table -->", 1)[0]
    assert table == settings_table()


def test_the_error_codes_table_is_the_one_in_the_service():
    """Every code the service answers with is listed once, in serve/errors.py; the README shows that table."""
    from serve.errors import codes_table

    text = (ROOT / "README.md").read_text()
    table = text.split("<!-- error codes -->\n", 1)[1].split("\n<!-- /error codes -->", 1)[0]
    assert table == codes_table()
