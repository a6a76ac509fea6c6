"""The suite itself: it runs the same when its parent ignores SIGINT (nohup, some CI runners)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from support import subprocess_env

ROOT = Path(__file__).resolve().parent.parent


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_ctrl_c_tests_pass_when_the_parent_ignores_sigint() -> None:
    """A Ctrl-C test run by a pytest whose parent ignores SIGINT still gets its KeyboardInterrupt."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_core_table.py::test_keyboard_interrupt_during_wait_leaves_nothing",
        ],
        cwd=ROOT,
        env=subprocess_env(),
        preexec_fn=_ignore_sigint,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
