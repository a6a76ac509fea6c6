"""Every ```python block of README.md runs as written, each in a fresh interpreter and working directory.

Blocks fenced as ```py are illustrations (a remote server, names left to the
reader) and are not run. A block that names a local server's URL needs that
server: it is skipped without it, and fails under KANNUKI_REQUIRE_DBS=1.
A block that defines ``test_*`` functions is a pytest example: they are called
inside ``kannuki.testing.test_mode()``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from support import subprocess_env

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
SERVERS = {"postgresql://": "pg_url", "mysql://": "mysql_url", "redis://": "redis_url"}
RUN_TESTS = """
import kannuki.testing
with kannuki.testing.test_mode() as mode:
    for name, fn in list(globals().items()):
        if name.startswith("test_") and callable(fn):
            fn(mode)
"""


def blocks() -> list[object]:
    text = README.read_text(encoding="utf-8")
    found = []
    for match in BLOCK.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        found.append(pytest.param(match.group(1), id=f"README.md:{line}"))
    return found


def test_readme_has_examples() -> None:
    """README.md has runnable examples at all (the parser found them)."""
    assert len(blocks()) >= 10


@pytest.mark.parametrize("source", blocks())
def test_readme_example_runs(source: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The example runs without error or warning."""
    code_only = "\n".join(line.split("#", 1)[0] for line in source.splitlines())
    for scheme, fixture in SERVERS.items():
        if re.search(re.escape(scheme) + r"[^\s\"']*127\.0\.0\.1", code_only):
            request.getfixturevalue(fixture)  # skip, or fail under KANNUKI_REQUIRE_DBS=1
    if re.search(r"^def test_", source, re.MULTILINE):
        source += RUN_TESTS
    env = subprocess_env(PYTHONWARNINGS="error", XDG_STATE_HOME=str(tmp_path / "state"))
    env.pop("KANNUKI_URL", None)
    result = subprocess.run(
        [sys.executable, "-c", source], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
