"""Every ```python block of README.md and of docs/ runs as written, each in a fresh interpreter and directory.

(The docs' own examples are mostly doctests, run by ``sphinx-build -b doctest`` in scripts/gates;
their ```python blocks, such as the pytest example, run here.)

Blocks fenced as ```py are illustrations (a remote server, names left to the
reader) and are not run. A block that names a local server's URL needs that
server: it is skipped without it, and fails under KANNUKI_REQUIRE_DBS=1.
A block that defines ``test_*`` functions is a pytest example: it is saved as a
test module and run by pytest, as a reader would, with kannuki's plugin and
nothing added to the block (a missing import fails).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from support import subprocess_env

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
# A block that names a local server needs its fixture: a URL of it (a SQLAlchemy one too,
# postgresql+psycopg://...), or Django settings with a database engine on 127.0.0.1.
SERVERS = {r"postgresql(\+\w+)?://": "pg_url", r"mysql(\+\w+)?://": "mysql_url", "redis://": "redis_url"}
DJANGO_ENGINES = {"django.db.backends.postgresql": "pg_url", "django.db.backends.mysql": "mysql_url"}


def blocks(pages: list[Path] = PAGES) -> list[object]:
    found = []
    for page in pages:
        if "_build" in page.parts:
            continue
        text = page.read_text(encoding="utf-8")
        for match in BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append(pytest.param(match.group(1), id=f"{page.relative_to(ROOT)}:{line}"))
    return found


def test_readme_has_examples() -> None:
    """README.md has runnable examples at all (the parser found them), the pytest one among them."""
    readme = blocks([README])
    assert len(readme) >= 5
    assert any("def test_" in str(block.values[0]) for block in blocks())  # type: ignore[attr-defined]


@pytest.mark.parametrize("source", blocks())
def test_readme_example_runs(source: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The example runs without error or warning."""
    code_only = "\n".join(line.split("#", 1)[0] for line in source.splitlines())
    for pattern, fixture in SERVERS.items():
        if re.search(pattern + r"[^\s\"']*127\.0\.0\.1", code_only):
            request.getfixturevalue(fixture)  # skip, or fail under KANNUKI_REQUIRE_DBS=1
    for engine, fixture in DJANGO_ENGINES.items():
        if re.search(re.escape(engine) + r"\b", code_only) and "127.0.0.1" in code_only:
            request.getfixturevalue(fixture)
    env = subprocess_env(PYTHONWARNINGS="error", XDG_STATE_HOME=str(tmp_path / "state"))
    env.pop("KANNUKI_URL", None)
    tests = len(re.findall(r"^def test_", source, re.MULTILINE))
    if tests:  # a pytest example: run it with pytest (the kannuki plugin comes from its entry point)
        (tmp_path / "test_readme_example.py").write_text(source, encoding="utf-8")
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_readme_example.py"]
    else:
        command = [sys.executable, "-c", source]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    if tests:
        assert f"{tests} passed" in result.stdout, result.stdout
