"""The README's commands are true: the main job runs, and CI runs the test command as written."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _block(marker: str) -> str:
    match = re.search(rf"<!-- {marker} -->\n```bash\n(.*?)\n```\n<!-- /{marker} -->", README, re.S)
    assert match, f"README.md has no {marker} block"
    return match.group(1)


def test_ci_runs_the_readme_test_command() -> None:
    command = _block("test-command")
    assert "pytest" in command and 'pip install -e ".[dev]"' in command
    ci = (ROOT / ".ci" / "run").read_text()
    assert "<!-- test-command -->" in ci  # .ci/run executes that block, not a copy of it


def test_main_command_serves_the_embedded_default() -> None:
    # Running it is tests/integration/test_serve_cli.py's job: it serves until stopped.
    steps = [s.strip() for s in _block("main-command").split("&&")]
    assert steps[:2] == ["python3 -m venv .venv", ". .venv/bin/activate"]
    assert steps[2] == 'pip install ".[serve,train]"'  # Ray, and [train]: the first run builds
    assert steps[3:] == ["cascade serve policies/digits.yaml"]
    assert (ROOT / "policies" / "digits.yaml").is_file()
    example = _block("request-example")
    assert example.startswith("curl -s localhost:8000/v2/models/digits/infer ")
