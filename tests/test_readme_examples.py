"""Every ```python block of README.md runs as written (each in a fresh namespace and working directory)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import pytest

import kannuki

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
NEEDS = {"postgresql://": "pg_url", "mysql://": "mysql_url", "redis://": "redis_url"}


def blocks() -> list[object]:
    text = README.read_text(encoding="utf-8")
    found = []
    for match in BLOCK.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        found.append(pytest.param(match.group(1), id=f"README.md:{line}"))
    return found


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    previous = kannuki.locker._default
    try:
        yield
    finally:
        current = kannuki.locker._default
        if current is not None and current is not previous:
            current.close()
        kannuki.locker._default = previous


def test_readme_has_examples() -> None:
    """README.md has runnable examples at all (the parser found them)."""
    assert len(blocks()) >= 3


@pytest.mark.parametrize("source", blocks())
def test_readme_example_runs(source: str, isolated: None, request: pytest.FixtureRequest) -> None:
    """The example runs without error."""
    code = "\n".join(line.split("#", 1)[0] for line in source.splitlines())
    for scheme, fixture in NEEDS.items():
        if scheme in code:
            request.getfixturevalue(fixture)  # skip, or fail under KANNUKI_REQUIRE_DBS=1
    namespace: dict[str, object] = {"__name__": "readme_example"}
    exec(compile(source, str(README), "exec"), namespace)  # noqa: S102 - the README is ours
