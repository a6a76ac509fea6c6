"""The build: the compiled core really is compiled, and the sdist/wheel carry what they must.

``test_native_core_loaded_on_cpython`` (tests/test_core_twins.py) checks that the dispatcher
picked the native core; here we check what was loaded and what ``python -m build`` produces.
The dist checks are slow (a full Cython build, 1-3 minutes): they run only under
``scripts/check_dist`` (KANNUKI_CHECK_DIST=1), never with KANNUKI_NO_EXTENSIONS set.
"""

from __future__ import annotations

import importlib.machinery
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Callable, TypeVar

import pytest

import kannuki
from kannuki import _pure

F = TypeVar("F", bound=Callable[..., object])
ROOT = Path(__file__).resolve().parent.parent
PURE_FORCED = os.environ.get("KANNUKI_NO_EXTENSIONS", "") not in ("", "0")
needs_compiled_build = pytest.mark.skipif(
    platform.python_implementation() != "CPython" or PURE_FORCED,
    reason="the compiled core is built on CPython without KANNUKI_NO_EXTENSIONS",
)
# The dist checks build everything from scratch (1-3 minutes on 2 busy cores): too slow for every
# suite run, so they run only when asked, by scripts/check_dist (KANNUKI_CHECK_DIST=1) and the wheels CI.
DIST_CHECK_MARKS = (
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(
        os.environ.get("KANNUKI_CHECK_DIST") != "1", reason="set KANNUKI_CHECK_DIST=1 (scripts/check_dist)"
    ),
    needs_compiled_build,
)


def dist_check(test: F) -> F:
    """Mark a test as one of the opt-in dist checks."""
    for mark in DIST_CHECK_MARKS:
        test = mark(test)
    return test


# What must never reach the sdist's build: generated and compiled files, caches, the venv.
NOT_SOURCES = shutil.ignore_patterns(
    ".venv",
    ".git",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".benchmarks",
    ".hypothesis",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    "*.so",
    "*.pyd",
    "*.c",
    "*.html",
)
BUILD_TIMEOUT = 600  # seconds; a cold Cython build on 2 busy cores takes about one minute


@needs_compiled_build
def test_native_module_is_a_compiled_extension() -> None:
    """kannuki._native was loaded from a compiled extension file, with its .pyi and py.typed beside it."""
    from kannuki import _native

    path = Path(_native.__file__ or "")
    assert path.name.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)), path
    assert path.with_name("_native.pyi").is_file()
    assert path.with_name("py.typed").is_file()
    assert kannuki.NATIVE


# -- python -m build, then install in fresh venvs ------------------------------------------------


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment for a build or a fresh interpreter: nothing of this test run leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KANNUKI_", "PYTHON"))}
    env.update(extra)
    return env


def _run(*args: str | Path, cwd: Path, **env: str) -> str:
    result = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=_clean_env(**env),
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{output[-4000:]}"
    return output


def _fresh_venv(path: Path, wheel: Path) -> Path:
    """A new venv without pip or system site-packages, with ``wheel`` installed (offline)."""
    _run(sys.executable, "-m", "venv", "--without-pip", path, cwd=path.parent)
    python = path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    _run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        python,
        "install",
        "-q",
        "--no-index",
        "--no-deps",
        wheel,
        cwd=path.parent,
    )
    return python


def _probe(python: Path, cwd: Path) -> str:
    """Import the installed kannuki in ``python`` (away from src/) and exercise it; returns its report."""
    script = (
        "import kannuki, kannuki._core as core\n"
        "locker = kannuki.Locker('memory://')\n"
        "with locker.lock('build-check') as lock:\n"
        "    assert lock.token and locker.held('build-check')\n"
        "print(kannuki.NATIVE, kannuki.lock_id('build-check'), kannuki.__file__, core.FALLBACK_REASON)\n"
    )
    return _run(python, "-c", script, cwd=cwd).strip().splitlines()[-1]


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(sdist, wheel) from ``python -m build`` on a clean copy of the tree: the wheel is built from the sdist."""
    pytest.importorskip("build")
    work = tmp_path_factory.mktemp("dist")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCES)
    # --no-isolation: use this venv's setuptools and Cython, no network.
    _run(
        sys.executable,
        "-m",
        "build",
        "--no-isolation",
        "--outdir",
        work / "out",
        source,
        cwd=work,
        KANNUKI_REQUIRE_EXTENSIONS="1",
    )
    (sdist,) = (work / "out").glob("*.tar.gz")
    (wheel,) = (work / "out").glob("*.whl")
    return sdist, wheel


@dist_check
def test_sdist_carries_the_sources_and_tests(dists: tuple[Path, Path]) -> None:
    """The sdist has the Cython source, the stub, py.typed and the tests, and no generated C or binaries."""
    sdist, _ = dists
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for required in (
        "ext/_native.pyx",
        "setup.py",
        "pyproject.toml",
        "src/kannuki/_native.pyi",
        "src/kannuki/py.typed",
        "tests/test_core_hashing.py",
    ):
        assert required in names, f"{required} missing from {sdist.name}"
    assert not [n for n in names if n.endswith((".c", ".so", ".pyd"))]


@dist_check
def test_wheel_carries_the_compiled_core_and_imports_native(dists: tuple[Path, Path], tmp_path: Path) -> None:
    """The wheel has kannuki/_native*.so, _native.pyi and py.typed, and imports with NATIVE True in a fresh venv."""
    _, wheel = dists
    assert "-none-any" not in wheel.name, f"{wheel.name} is a pure wheel"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    assert [n for n in names if n.startswith("kannuki/_native") and n.endswith(suffixes)], sorted(names)
    assert {"kannuki/_native.pyi", "kannuki/py.typed"} <= names
    assert not [n for n in names if n.endswith((".pyx", ".c"))]

    python = _fresh_venv(tmp_path / "venv", wheel)
    native, lock_id, location, reason = _probe(python, tmp_path).split(" ", 3)
    assert native == "True", f"pure core in the wheel: {reason}"
    assert int(lock_id) == _pure.lock_id("build-check")
    assert Path(location).resolve().is_relative_to((tmp_path / "venv").resolve()), location


@dist_check
def test_sdist_installs_pure_python_without_a_compiler(dists: tuple[Path, Path], tmp_path: Path) -> None:
    """With no working C compiler the sdist still builds (a warning, not an error) and works as pure Python."""
    sdist, _ = dists
    built = tmp_path / "wheels"
    output = _run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-v",
        "--no-index",
        "--no-deps",
        "--no-build-isolation",
        "--wheel-dir",
        built,
        sdist,
        cwd=tmp_path,
        CC="/bin/false",
        CXX="/bin/false",
        LDSHARED="/bin/false",
    )
    assert "could not be compiled" in output, output[-3000:]
    (wheel,) = built.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert not [n for n in archive.namelist() if n.endswith((".so", ".pyd"))]

    python = _fresh_venv(tmp_path / "venv", wheel)
    native, lock_id, _location, reason = _probe(python, tmp_path).split(" ", 3)
    assert native == "False"
    assert "did not load" in reason
    assert int(lock_id) == _pure.lock_id("build-check")
