"""The repository passes ``make lint`` (ruff, pinned in pyproject.toml, with its rule set)."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_repository_is_lint_clean():
    pytest.importorskip("ruff", reason="ruff is not installed (pip install '.[dev]')")
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=ROOT,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
