"""The error hierarchy, and what `import kannuki` does (and must not do)."""

from __future__ import annotations

import importlib.machinery
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import kannuki
from kannuki import errors


def test_every_error_is_a_kannuki_error_and_the_stdlib_error_users_catch() -> None:
    """Each error derives from KannukiError; the timeout one is a TimeoutError, misuse ones RuntimeErrors."""
    for name in errors.__all__:
        assert issubclass(getattr(kannuki, name), kannuki.KannukiError)
    assert issubclass(kannuki.LockNotAcquiredError, TimeoutError)
    assert issubclass(kannuki.NotHeldError, RuntimeError)
    assert issubclass(kannuki.AlreadyHeldError, RuntimeError)
    assert issubclass(kannuki.ConfigurationError, ValueError)
    assert issubclass(kannuki.DeadlockError, kannuki.BackendError)


@pytest.mark.parametrize("name", errors.__all__)
def test_errors_pickle_with_message_and_attributes(name: str) -> None:
    """An error survives pickling with its message, key and extra attributes."""
    cls = getattr(errors, name)
    error = cls("the lock 'k' is busy", key="k", holder="pid 1")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls
    assert str(copy) == "the lock 'k' is busy"
    assert copy.key == "k" and copy.holder == "pid 1"


def test_errors_declare_key_keys_holder_and_retry_after() -> None:
    """Every error has key (str or None), keys (a tuple), holder and retry_after, also after pickling."""
    one = kannuki.LockNotAcquiredError("the lock 'a' is busy", key="a")
    assert (one.key, one.keys, one.holder, one.retry_after) == ("a", ("a",), None, None)
    many = kannuki.LockNotAcquiredError("could not acquire all of ['a', 'b']", keys=["a", "b"])
    assert (many.key, many.keys) == ("a", ("a", "b"))
    none = kannuki.ConfigurationError("bad URL")
    assert (none.key, none.keys, none.holder, none.retry_after) == (None, (), None, None)
    opened = kannuki.CircuitOpenError("the circuit is open", key="a", retry_after=1.5)
    copy = pickle.loads(pickle.dumps(opened))
    assert (copy.key, copy.keys, copy.retry_after) == ("a", ("a",), 1.5)
    assert pickle.loads(pickle.dumps(many)).keys == ("a", "b")


def test_public_names_are_sorted_and_exist() -> None:
    """__all__ lists existing names, sorted, with no duplicates."""
    assert kannuki.__all__ == sorted(kannuki.__all__, key=lambda n: (not n.isupper(), n))
    assert len(set(kannuki.__all__)) == len(kannuki.__all__)
    for name in kannuki.__all__:
        assert hasattr(kannuki, name), name


def test_import_has_no_side_effects() -> None:
    """`import kannuki` starts no thread, opens no socket and adds only a NullHandler."""
    code = textwrap.dedent(
        """
        import logging, threading, socket, sys
        opened = []
        real = socket.socket.connect
        socket.socket.connect = lambda self, *a: opened.append(a) or real(self, *a)
        before = threading.active_count()
        root_handlers = list(logging.getLogger().handlers)
        import kannuki
        assert threading.active_count() == before, "a thread was started"
        assert not opened, opened
        assert logging.getLogger().handlers == root_handlers, "root logger touched"
        handlers = logging.getLogger("kannuki").handlers
        assert [type(h).__name__ for h in handlers] == ["NullHandler"], handlers
        drivers = {"psycopg", "MySQLdb", "redis", "psycopg_pool", "sqlalchemy", "django", "celery", "rq"}
        assert not drivers & set(sys.modules), drivers & set(sys.modules)
        print("clean")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "clean"


# -- which core loaded, and why -----------------------------------------------------------------


def _pure_copy(tmp_path: Path) -> Path:
    """A copy of the kannuki package under test with no compiled core in it; returns its kannuki/."""
    package = Path(kannuki.__file__).resolve().parent
    copy = tmp_path / "site" / "kannuki"
    shutil.copytree(
        package,
        copy,
        ignore=shutil.ignore_patterns(
            "__pycache__", "_native.*.so", "_native.*.pyd", "_native.so", "_fallback_reason.txt"
        ),
    )
    return copy


def _core_report(site: Path) -> tuple[str, str]:
    """(FALLBACK_REASON, the kannuki log) of ``import kannuki`` from ``site`` in a fresh interpreter."""
    script = textwrap.dedent(
        """
        import io, logging
        log = io.StringIO()
        logging.basicConfig(stream=log, level=logging.DEBUG, format="%(name)s %(levelname)s %(message)s")
        import kannuki._core as core
        print(core.FALLBACK_REASON)
        print(log.getvalue(), end="")
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("KANNUKI_NO_EXTENSIONS", "PYTHONPATH")}
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=dict(env, PYTHONPATH=str(site)),
        cwd=site,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    reason, _, log = result.stdout.partition("\n")
    return reason, log


def test_fallback_reason_says_the_compiled_core_is_missing_not_a_circular_import(tmp_path: Path) -> None:
    """With no kannuki._native file, FALLBACK_REASON says the compiled core is not installed (not
    "partially initialized module ... circular import"), and a DEBUG line on "kannuki" says so too."""
    copy = _pure_copy(tmp_path)
    reason, log = _core_report(copy.parent)
    assert "circular" not in reason and "partially initialized" not in reason, reason
    assert "compiled core is not installed" in reason
    assert f"kannuki DEBUG using the pure-Python core: {reason}" in log.splitlines()


def test_fallback_reason_gives_the_build_s_recorded_cause(tmp_path: Path) -> None:
    """A build that fell back records why (kannuki/_fallback_reason.txt, written by setup.py): the
    reason at run time is that cause."""
    copy = _pure_copy(tmp_path)
    (copy / "_fallback_reason.txt").write_text("the C compiler failed: CompileError: gcc not found\n")
    reason, _ = _core_report(copy.parent)
    assert reason == (
        "the compiled core was not built when kannuki was installed: the C compiler failed: CompileError: gcc not found"
    )


def test_fallback_reason_names_a_core_built_for_another_python_or_broken(tmp_path: Path) -> None:
    """A compiled core for another interpreter is named as such; one that is there but fails to load
    gives the loader's own error."""
    copy = _pure_copy(tmp_path)
    (copy / "_native.cpython-20-fake.so").write_bytes(b"")
    reason, _ = _core_report(copy.parent)
    assert "_native.cpython-20-fake.so" in reason and "another Python" in reason
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    (copy / f"_native{suffix}").write_bytes(b"not an ELF file")
    reason, _ = _core_report(copy.parent)
    assert reason.startswith("the compiled core is installed but did not load: ImportError: "), reason
    assert f"_native{suffix}" in reason
