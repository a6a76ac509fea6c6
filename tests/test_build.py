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
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

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
    "_build",
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


# -- what the sdist and the metadata say (fast) -----------------------------------------------------

# cibuildwheel runs this module from a copy of tests/ and pyproject.toml alone: these need the tree.
needs_tree = pytest.mark.skipif(
    not (ROOT / "MANIFEST.in").is_file(), reason="needs the source tree (MANIFEST.in, LICENSE, scripts/)"
)


@needs_tree
def test_every_manifest_include_matches_files() -> None:
    """Each include / recursive-include of MANIFEST.in matches at least one file of the tree (a pattern
    that matches nothing is a stale promise, and a warning in every sdist build)."""
    import glob

    stale = []
    for line in (ROOT / "MANIFEST.in").read_text(encoding="utf-8").splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] not in ("include", "recursive-include"):
            continue
        if words[0] == "include":
            stale += [p for p in words[1:] if not glob.glob(p, root_dir=ROOT)]
        else:
            folder, patterns = words[1], words[2:]
            stale += [
                f"{folder}/**/{p}"
                for p in patterns
                if not glob.glob(f"{folder}/**/{p}", root_dir=ROOT, recursive=True)
            ]
    assert not stale, f"MANIFEST.in patterns that match no file: {stale}"


def _pyproject() -> dict[str, Any]:
    import tomllib  # 3.11+; the metadata checks need not run on 3.10

    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


@needs_tree
def test_package_metadata_is_complete_and_consistent() -> None:
    """LICENSE matches the license field; the URLs exist; requires-python, the per-version classifiers
    and the wheels built agree; the postgres extra is plain psycopg; test/bench are dependency groups."""
    pytest.importorskip("tomllib")
    config = _pyproject()
    project = config["project"]
    assert project["license"] == "MIT" and "LICENSE" in project["license-files"]
    assert (ROOT / "LICENSE").read_text(encoding="utf-8").startswith("MIT License")
    assert {"Homepage", "Documentation", "Source", "Issues", "Changelog"} <= set(project["urls"])
    floor = project["requires-python"]
    assert floor.startswith(">=3.")
    oldest = int(floor.removeprefix(">=3."))
    versions = sorted(
        int(c.rsplit(".", 1)[1])
        for c in project["classifiers"]
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    )
    assert versions == list(range(oldest, versions[-1] + 1)), versions
    built = sorted(int(tag[3:-2]) for tag in config["tool"]["cibuildwheel"]["build"].split())
    assert built == versions, (built, versions)
    extras = project["optional-dependencies"]
    assert [r for r in extras["postgres"] if r.startswith("psycopg")] == ["psycopg>=3.1", "psycopg-pool>=3.2"]
    assert not {"test", "bench"} & set(extras), "test and bench are dependency groups, not published extras"
    assert {"test", "bench"} <= set(config["dependency-groups"])


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
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One clean copy of the tree, taken once: every build of this module starts from a copy of it
    (the tree may change while the builds run)."""
    source = tmp_path_factory.mktemp("snapshot") / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCES)
    return source


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory, snapshot: Path) -> tuple[Path, Path]:
    """(sdist, wheel) from ``python -m build`` on a clean copy of the tree: the wheel is built from the sdist."""
    pytest.importorskip("build")
    work = tmp_path_factory.mktemp("dist")
    source = work / "source"
    shutil.copytree(snapshot, source)
    # --no-isolation: use this venv's setuptools and Cython, no network.
    output = _run(
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
    # setuptools warns for a MANIFEST.in pattern that matches nothing ("no files found matching ...").
    assert "no files found matching" not in output, output[-4000:]
    (sdist,) = (work / "out").glob("*.tar.gz")
    (wheel,) = (work / "out").glob("*.whl")
    return sdist, wheel


@pytest.fixture(scope="module")
def tree_wheel(tmp_path_factory: pytest.TempPathFactory, snapshot: Path) -> Path:
    """The wheel ``python -m build --wheel`` makes straight from (a clean copy of) the tree."""
    pytest.importorskip("build")
    work = tmp_path_factory.mktemp("tree-wheel")
    source = work / "source"
    shutil.copytree(snapshot, source)
    _run(
        sys.executable,
        "-m",
        "build",
        "--wheel",
        "--no-isolation",
        "--outdir",
        work / "out",
        source,
        cwd=work,
        KANNUKI_REQUIRE_EXTENSIONS="1",
    )
    (wheel,) = (work / "out").glob("*.whl")
    return wheel


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
        "LICENSE",
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
    # No compiled code in it, so not tagged as a platform's wheel (cp311-cp311-linux_x86_64).
    assert wheel.name.endswith("-py3-none-any.whl"), wheel.name
    with zipfile.ZipFile(wheel) as archive:
        assert not [n for n in archive.namelist() if n.endswith((".so", ".pyd"))]
        assert "Root-Is-Purelib: true" in archive.read(f"{_dist_info(archive)}/WHEEL").decode()
        recorded = archive.read("kannuki/_fallback_reason.txt").decode()
    assert recorded.startswith("the C compiler failed: "), recorded

    python = _fresh_venv(tmp_path / "venv", wheel)
    native, lock_id, _location, reason = _probe(python, tmp_path).split(" ", 3)
    assert native == "False"
    # The real cause, as the build recorded it: not "cannot import name '_native' ... circular import".
    assert reason == f"the compiled core was not built when kannuki was installed: {recorded.strip()}"
    assert int(lock_id) == _pure.lock_id("build-check")


def _dist_info(archive: zipfile.ZipFile) -> str:
    (name,) = {n.split("/", 1)[0] for n in archive.namelist() if n.split("/", 1)[0].endswith(".dist-info")}
    return name


@dist_check
def test_the_sdist_builds_the_same_wheel_as_the_tree(dists: tuple[Path, Path], tree_wheel: Path) -> None:
    """The wheel built from the sdist has the same name, files and contents as the one built from the
    tree (only the compiled module's bytes, and so RECORD's hash of it, may differ): the sdist misses
    nothing the build uses."""
    _, sdist_wheel = dists
    assert sdist_wheel.name == tree_wheel.name
    with zipfile.ZipFile(sdist_wheel) as a, zipfile.ZipFile(tree_wheel) as b:
        assert sorted(a.namelist()) == sorted(b.namelist())
        suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
        for name in a.namelist():
            if not name.endswith((*suffixes, "/RECORD")):
                assert a.read(name) == b.read(name), (
                    f"{name} differs between the sdist's wheel and the tree's"
                )


@dist_check
def test_twine_check_passes_on_the_sdist_and_the_wheel(dists: tuple[Path, Path]) -> None:
    """``twine check --strict``: the metadata and the README render as PyPI will show them."""
    output = _run(sys.executable, "-m", "twine", "check", "--strict", *dists, cwd=dists[0].parent)
    assert output.count("PASSED") == 2, output


# -- scripts/test: server set-up only when asked ---------------------------------------------------

# Stand-ins for the server tools, first on PATH: every server is up, but PostgreSQL and MariaDB refuse
# the tests' passwordless logins. Each call is appended to calls.log; `su postgres -c "... show
# hba_file"` names a pg_hba.conf in the test's directory, so the one real change lands there.
STUBS = {
    "pg_isready": "exit 0",
    "mysqladmin": "exit 0",
    "redis-cli": "echo PONG",
    "psql": 'echo "psql: error: fe_sendauth: no password supplied" >&2; exit 2',
    "mysql": 'case "$*" in *"-h 127.0.0.1"*) echo "ERROR 1698 (28000): Access denied" >&2; exit 1;; esac',
    "su": 'case "$*" in *hba_file*) echo "$STUB_DIR/pg_hba.conf";; *pg_database*) echo 1;; esac',
    "sudo": '"$@"',
    "apt-get": "exit 0",
}


def _scripts_test(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], str, str]:
    """Run a copy of scripts/test with the stand-ins; (result, pg_hba.conf after, calls made)."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name, body in STUBS.items():
        stub = stubs / name
        stub.write_text(f'#!/bin/sh\necho "{name} $*" >>"$STUB_DIR/calls.log"\n{body}\n')
        stub.chmod(0o755)
    (stubs / "pg_hba.conf").write_text("local all postgres peer\n")
    # A copy, so that ROOT is tmp_path (scripts/test removes ROOT/build); its venv's python stops it
    # with status 3 at the first pip call, after the servers are dealt with.
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "test", tmp_path / "scripts" / "test")
    venv_python = tmp_path / "venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text("#!/bin/sh\necho 'venv reached' >&2\nexit 3\n")
    venv_python.chmod(0o755)
    clean = {k: v for k, v in os.environ.items() if k not in ("CI", "KANNUKI_SETUP_SERVERS")}
    clean.update(
        PATH=f"{stubs}{os.pathsep}{os.environ['PATH']}",
        STUB_DIR=str(stubs),
        KANNUKI_VENV=str(tmp_path / "venv"),
        PYTHON=sys.executable,
        **env,
    )
    result = subprocess.run(
        ["bash", str(tmp_path / "scripts" / "test")],
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    calls = stubs / "calls.log"
    return result, (stubs / "pg_hba.conf").read_text(), calls.read_text() if calls.exists() else ""


@needs_tree
@pytest.mark.skipif(os.name == "nt" or shutil.which("bash") is None, reason="scripts/test is a bash script")
def test_scripts_test_changes_no_server_security_unless_asked(tmp_path: Path) -> None:
    """Without CI=true or KANNUKI_SETUP_SERVERS=1, scripts/test changes no server: it names what is
    missing and how to allow it (and the switch that does it), and exits 1 before the tests."""
    result, hba, calls = _scripts_test(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert hba == "local all postgres peer\n"
    assert "sed" not in calls and "-uroot -e" not in calls.replace("-h 127.0.0.1 -uroot -e", "")
    assert "venv reached" not in result.stderr
    for needed in (
        "PostgreSQL: user postgres cannot connect",
        "fe_sendauth: no password supplied",
        "pg_reload_conf()",
        "sudo -u postgres createdb test",
        "MariaDB: root cannot connect",
        "Access denied",
        "GRANT ALL ON *.* TO 'root'@'127.0.0.1'",
        "KANNUKI_SETUP_SERVERS=1 scripts/test",
    ):
        assert needed in result.stderr, result.stderr
    assert "change:" not in result.stdout + result.stderr


@needs_tree
@pytest.mark.skipif(os.name == "nt" or shutil.which("bash") is None, reason="scripts/test is a bash script")
@pytest.mark.parametrize("switch", [{"KANNUKI_SETUP_SERVERS": "1"}, {"CI": "true"}], ids=["flag", "CI"])
def test_scripts_test_sets_up_servers_when_asked_and_prints_each_change(
    tmp_path: Path, switch: dict[str, str]
) -> None:
    """With KANNUKI_SETUP_SERVERS=1 or CI=true it makes the servers accept the tests' logins, printing
    each change (pg_hba.conf, the reload, MariaDB's grants), then goes on to the venv."""
    result, hba, calls = _scripts_test(tmp_path, **switch)
    assert result.returncode == 3 and "venv reached" in result.stderr, result.stdout + result.stderr
    assert hba.splitlines() == [
        "host all all 127.0.0.1/32 trust",
        "host all all ::1/128 trust",
        "local all postgres peer",
    ]
    assert "pg_reload_conf()" in calls and "GRANT ALL ON *.* TO 'root'@'127.0.0.1'" in calls
    changes = [line for line in result.stdout.splitlines() if line.lstrip().startswith("change:")]
    assert len(changes) == 3, result.stdout
    assert "pg_hba.conf" in changes[0] and "pg_reload_conf()" in changes[1]
    assert "GRANT ALL ON *.* TO 'root'@'127.0.0.1'" in changes[2]
    assert f"({next(iter(switch))}=" in result.stdout
