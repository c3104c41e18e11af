"""The README's commands are true: the main job runs, and CI runs the test command as written."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
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


def test_main_command_runs_on_the_embedded_default(tmp_path: Path) -> None:
    steps = [s.strip() for s in _block("main-command").split("&&")]
    cascade_steps = [s for s in steps if s.startswith("cascade ")]
    assert cascade_steps == ["cascade models build"]
    cli = Path(sys.executable).with_name("cascade")
    for step in cascade_steps:
        argv = [str(cli), *shlex.split(step)[1:], "--no-progress"]
        result = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        assert "dataset digits" in result.stdout
        assert "wrote 3 models and cards to models/digits/" in result.stdout
    assert sorted(p.name for p in (tmp_path / "models" / "digits").glob("*.onnx")) == [
        "large.onnx",
        "small.onnx",
        "tiny.onnx",
    ]
