"""Build kannuki, with its Cython core (ext/_native.pyx -> kannuki._native) when possible.

A missing compiler or Cython never fails the install: the build falls back to
the pure-Python core and says so in a framed warning (which pip shows only with
-v). The reason also goes into the built package (kannuki/_fallback_reason.txt),
where kannuki._core.FALLBACK_REASON and `kannuki info` report it at run time, and
such a wheel is tagged pure (py3-none-any), never as a platform's.

Environment switches (build time):
  KANNUKI_NO_EXTENSIONS=1    skip the extension, install pure Python only
  KANNUKI_CYTHON_ANNOTATE=1  write the HTML annotation next to the .pyx
  KANNUKI_CYTHON_TRACE=1     line tracing (coverage / profilers), CYTHON_TRACE_NOGIL
  KANNUKI_DEBUG_BUILD=1      -O0 -g, no optimisation
"""

from __future__ import annotations

import os
import sys
import traceback

from setuptools import Extension, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

try:  # setuptools >= 59 vendors distutils; older Pythons have the stdlib one
    from setuptools.errors import CCompilerError, ExecError, PlatformError
except ImportError:  # pragma: no cover
    from distutils.errors import (  # type: ignore[no-redef]
        CCompilerError,
        DistutilsExecError as ExecError,
        DistutilsPlatformError as PlatformError,
    )


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


NO_EXTENSIONS = _flag("KANNUKI_NO_EXTENSIONS") or sys.implementation.name != "cpython"
ANNOTATE = _flag("KANNUKI_CYTHON_ANNOTATE")
TRACE = _flag("KANNUKI_CYTHON_TRACE")
DEBUG = _flag("KANNUKI_DEBUG_BUILD")

# Every Cython directive in one place.
DIRECTIVES = {
    "language_level": "3",
    "embedsignature": True,
    # Indexing in ext/ is only over memoryviews whose length is checked first.
    "boundscheck": False,
    "wraparound": False,
    # No integer division or modulo by a possibly-zero or negative operand in ext/.
    "cdivision": True,
    "linetrace": TRACE,
    "profile": TRACE,
}

MACROS = [("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")] if TRACE else []
# No fused multiply-add: Backoff's float arithmetic must match the pure twin bit for bit.
CFLAGS = ["-ffp-contract=off"] if os.name != "nt" else ["/fp:precise"]
if DEBUG:
    CFLAGS += ["-O0", "-g"] if os.name != "nt" else ["/Od", "/Zi"]

BUILD_FAILURES = (CCompilerError, ExecError, PlatformError, OSError, ValueError)


def _frame(*lines: str) -> None:
    bar = "*" * 78
    print(bar, *(f"* {line}" for line in lines), bar, sep="\n", file=sys.stderr)


# Why the build is pure Python, for the package to tell at run time (kannuki._core.FALLBACK_REASON,
# `kannuki info`): written into the built package as kannuki/_fallback_reason.txt, only then.
FALLBACK_NOTE = "_fallback_reason.txt"
fallback_reason: str | None = None


def _write_note(build_lib: str) -> None:
    """Write (or, when the build is native, remove a stale) kannuki/_fallback_reason.txt in build_lib."""
    path = os.path.join(build_lib, "kannuki", FALLBACK_NOTE)
    if fallback_reason is None:
        if os.path.exists(path):
            os.remove(path)
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as note:
        note.write(fallback_reason + "\n")


def _fall_back(reason: str) -> None:
    global fallback_reason
    fallback_reason = " ".join(reason.split())[:500]


class BuildPy(build_py):
    """build_py that writes the note of a build known to be pure already (and drops a stale one)."""

    def run(self) -> None:
        super().run()
        _write_note(self.build_lib)


class BdistWheel(bdist_wheel):
    """bdist_wheel that tags the wheel by what was really built.

    bdist_wheel decides "pure or platform wheel" before building, from the extensions asked for; a
    compile that failed and fell back would still give a platform-tagged wheel (cp311-...-linux)
    holding no compiled code. Build first, then decide: a fallback wheel is py3-none-any.
    """

    def run(self) -> None:
        if not self.skip_build:
            build_scripts = self.reinitialize_command("build_scripts")
            build_scripts.executable = "python"
            build_scripts.force = True
            self.reinitialize_command("build_ext").inplace = False
            self.run_command("build")  # bdist_wheel's own run() then finds it done
        self.root_is_pure = not (self.distribution.has_ext_modules() or self.distribution.has_c_libraries())
        super().run()


class OptionalBuildExt(build_ext):
    """build_ext that falls back to pure Python instead of failing the install."""

    def run(self) -> None:
        try:
            super().run()
        except BUILD_FAILURES as exc:
            self._fallback(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except BUILD_FAILURES as exc:
            self._fallback(exc)
        else:
            print("kannuki: built the compiled core (kannuki._native)")

    def _fallback(self, exc: BaseException) -> None:
        if _flag("KANNUKI_REQUIRE_EXTENSIONS"):  # wheel builds must not come out pure
            raise exc
        # Nothing to copy or install for the failed extension (rebinding is safe mid-loop), and a
        # distribution without extensions: bdist_wheel then makes a pure (py3-none-any) wheel.
        self.extensions = [ext for ext in self.extensions if ext.name != "kannuki._native"]
        self.distribution.ext_modules = list(self.extensions)
        _fall_back(f"the C compiler failed: {type(exc).__name__}: {exc}")
        if not self.inplace:
            _write_note(self.build_lib)
        _frame(
            "WARNING: the kannuki C extension could not be compiled.",
            f"Cause: {type(exc).__name__}: {exc}".replace("\n", " ")[:300],
            "kannuki is installed with its pure-Python core: it works the same,",
            "only slower. Install a C compiler and the Python headers, then reinstall",
            "to get the compiled core.",
        )
        if DEBUG:
            traceback.print_exc()


def _extensions() -> list[Extension]:
    if NO_EXTENSIONS:
        print("kannuki: KANNUKI_NO_EXTENSIONS set (or not CPython): pure-Python build")
        _fall_back(
            "KANNUKI_NO_EXTENSIONS was set at build time"
            if _flag("KANNUKI_NO_EXTENSIONS")
            else f"the compiled core is built only for CPython, not {sys.implementation.name}"
        )
        return []
    try:
        from Cython.Build import cythonize
    except ImportError as exc:
        _frame(
            "WARNING: Cython is not installed, so the kannuki C extension is skipped.",
            f"Cause: {exc}",
            "kannuki is installed with its pure-Python core.",
        )
        _fall_back(f"Cython was not installed at build time: {exc}")
        return []
    ext = Extension(
        "kannuki._native",
        ["ext/_native.pyx"],
        define_macros=MACROS,
        extra_compile_args=CFLAGS,
    )
    try:
        return cythonize([ext], compiler_directives=DIRECTIVES, annotate=ANNOTATE, force=TRACE or DEBUG)
    except Exception as exc:  # a Cython compile error: report it and install pure Python
        if _flag("KANNUKI_REQUIRE_EXTENSIONS"):
            raise
        _frame("WARNING: Cython failed on ext/_native.pyx; installing the pure-Python core.", f"Cause: {exc}")
        _fall_back(f"Cython failed on ext/_native.pyx: {exc}")
        return []


setup(
    ext_modules=_extensions(),
    cmdclass={"build_ext": OptionalBuildExt, "build_py": BuildPy, "bdist_wheel": BdistWheel},
)
