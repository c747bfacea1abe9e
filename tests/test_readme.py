"""The README's commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.startswith("python3 -m venv")]


def test_ci_runs_the_readme_test_command():
    setup_and_run, setup_and_test = _readme_commands()[:2]
    assert setup_and_run.endswith(".venv/bin/fedsim")
    assert setup_and_test.endswith("-m pytest")
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert setup_and_test in ci_lines
    assert "torch==2.13.0" in setup_and_test.split("&&")[1]  # the CPU wheel goes in before anything pulls torch
