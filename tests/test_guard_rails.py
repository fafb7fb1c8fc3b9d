"""Guard rails that run with the tests: the package type-checks under `mypy --strict` (settings in
pyproject.toml) and the code passes ruff. A failure prints the checker's own report."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)


def test_mypy_strict_is_clean(tmp_path: Path) -> None:
    done = run("mypy", "--strict", "--cache-dir", str(tmp_path / "mypy-cache"), "sidecar")
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_is_clean() -> None:
    done = run("ruff", "check", "sidecar", "tests", "bench")
    assert done.returncode == 0, done.stdout + done.stderr
