"""Users' type checkers see kannuki's real types: a user program passes ``mypy --strict`` with no Any."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

USER_PROGRAM = Path(__file__).parent / "typing" / "user_program.py"


def test_a_strict_user_program_type_checks() -> None:
    """tests/typing/user_program.py: every assert_type holds against the installed kannuki, nothing is Any."""
    pytest.importorskip("mypy")
    if shutil.which("mypy", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("mypy is not installed beside this interpreter")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--disallow-any-unimported",
            "--no-incremental",
            "--cache-dir=/dev/null",
            str(USER_PROGRAM),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=USER_PROGRAM.parent,  # outside the repo root: mypy must find the installed kannuki
    )
    assert result.returncode == 0, result.stdout + result.stderr
