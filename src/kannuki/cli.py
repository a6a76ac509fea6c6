"""The ``kannuki`` command line: run a command under a lock, and look at locks.

Exit codes: 0 / the command's own status (``run``), 1 free (``held``),
2 bad usage, URL or option, 69 the lock store failed (EX_UNAVAILABLE),
75 the lock was not acquired (EX_TEMPFAIL), 126 / 127 the command could not
be run / was not found, 128+N the command died of signal N.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import kannuki
from kannuki.backends._types import Holder
from kannuki.errors import BackendError, ConfigurationError, LockLostError, NotSupportedError

__all__ = ["EXIT_BACKEND", "EXIT_NOT_ACQUIRED", "EXIT_USAGE", "default_url", "info", "main"]

EXIT_FREE = 1
EXIT_USAGE = 2
EXIT_BACKEND = 69  # EX_UNAVAILABLE
EXIT_NOT_ACQUIRED = 75  # EX_TEMPFAIL
EXIT_CANNOT_RUN = 126
EXIT_NOT_FOUND = 127

# How long `run` waits quietly before telling a terminal what it waits for.
PROGRESS_AFTER = 1.0
FORWARDED_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")

EPILOG = """\
The store: --url, else the KANNUKI_URL environment variable, else the embedded
SQLite file $XDG_STATE_HOME/kannuki/locks.sqlite3 (~/.local/state/kannuki/locks.sqlite3),
which locks the processes of this machine with no server.
URLs: sqlite:///rel.db  sqlite:////abs/locks.db  file:///abs/dir  redis://host:6379/0
      postgresql://user@host/db  mysql://user@host/db

Examples:
  kannuki run nightly-report -- ./make-report.sh      # one at a time, waits for its turn
  kannuki run --try backup -- rsync -a /data /backup  # skip (exit 75) if one is running
  kannuki run --timeout 30 deploy -- ./deploy.sh      # give up after 30 seconds
  kannuki held backup && echo "a backup is running"
  kannuki list
  kannuki id invoices/42 --prefix billing             # = SELECT hashtextextended('billing:invoices/42', 0)

Exit codes: the command's status (run), 0 held / 1 free (held), 2 usage or bad URL,
69 lock store unavailable, 75 lock not acquired, 126/127 command not runnable/found,
128+N command killed by signal N.
"""


def default_url() -> str:
    """The embedded SQLite store of this user: ``$XDG_STATE_HOME/kannuki/locks.sqlite3``."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return "sqlite:///" + os.path.join(os.path.abspath(state), "kannuki", "locks.sqlite3")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (0 <= value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``kannuki`` (exposed for docs and tests)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="lock store URL (default: $KANNUKI_URL, else the per-user SQLite file)")
    common.add_argument("--prefix", metavar="P", help="key prefix: the lock name is P:KEY (default: none)")

    parser = argparse.ArgumentParser(
        prog="kannuki",
        description="Advisory locks from the shell: run a command while holding a lock, and inspect locks.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=version_line())
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND", required=True)

    run = sub.add_parser(
        "run",
        parents=[common],
        help="run a command while holding a lock; exit with its status (75 when not acquired)",
        description="Take the lock KEY, run COMMAND, release the lock, exit with COMMAND's status. "
        "SIGINT, SIGTERM and SIGHUP are forwarded to COMMAND.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    wait = run.add_mutually_exclusive_group()
    wait.add_argument(
        "--timeout", type=_seconds, metavar="S", help="wait at most S seconds (default: wait forever)"
    )
    wait.add_argument(
        "--try", dest="try_once", action="store_true", help="do not wait: exit 75 at once if held"
    )
    run.add_argument("--shared", action="store_true", help="take a shared (reader) lock")
    run.add_argument(
        "--ttl", type=_seconds, metavar="S", help="lease length on lease stores (renewed every S/3)"
    )
    run.add_argument("key", metavar="KEY", help="the lock key")
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND...", help="the command to run")

    ident = sub.add_parser("id", parents=[common], help="print the 64-bit lock ID of KEY (no store needed)")
    ident.add_argument("key", metavar="KEY")

    held = sub.add_parser(
        "held",
        parents=[common],
        help="say whether KEY is held by anyone (and by whom); exit 0 when held, 1 when free",
    )
    held.add_argument("key", metavar="KEY")
    held.add_argument("-q", "--quiet", action="store_true", help="print nothing: only the exit status")

    listing = sub.add_parser(
        "list", parents=[common], help="show the locks held in the store, with their holders"
    )
    listing.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")

    breaking = sub.add_parser(
        "break",
        parents=[common],
        help="free a stranded lock whoever holds it (asks first; --yes to skip the question)",
        description="The operator's tool for a stranded lock: lease stores delete its record; PostgreSQL "
        "and MySQL end the holder's session. The holder sees its lock lost.",
    )
    breaking.add_argument("key", metavar="KEY")
    breaking.add_argument(
        "--yes", action="store_true", help="do not ask: break it (and end the holder's session)"
    )

    info = sub.add_parser(
        "info",
        help="what this install has: version, core (native or pure, and why), drivers found",
        description="Print kannuki's version, which core is loaded (the compiled one, or the pure-Python "
        "one and why) and the drivers of each store with their versions.",
    )
    info.add_argument("--json", action="store_true", help="one JSON object instead of text")
    # Each verb's own parser, to report an unknown option with that verb's usage.
    for name, verb_parser in sub.choices.items():
        verb_parser.set_defaults(verb_parser=verb_parser, verb=name)
    return parser


def core_line() -> str:
    """``native`` or ``pure Python (why)``: the core this process loaded."""
    if kannuki.NATIVE:
        return "native (compiled Cython)"
    return f"pure Python ({kannuki._core.FALLBACK_REASON})"


def version_line() -> str:
    """``kannuki --version``: the version and the core loaded."""
    if kannuki.NATIVE:
        return f"kannuki {kannuki.__version__}, native core"
    return f"kannuki {kannuki.__version__}, pure-Python core (`kannuki info` says why)"


# The drivers of each store: (store, distribution names (the first is the driver), module to import,
# how to install it). The standard-library stores are listed with their library.
DRIVERS: tuple[tuple[str, tuple[str, ...], str, str], ...] = (
    (
        "postgresql",
        ("psycopg", "psycopg-binary", "psycopg-c", "psycopg-pool"),
        "psycopg",
        "pip install 'kannuki[postgres]' 'psycopg[binary]'",
    ),
    ("mysql", ("mysqlclient",), "MySQLdb", "pip install 'kannuki[mysql]'"),
    ("redis", ("redis",), "redis", "pip install 'kannuki[redis]'"),
    ("prometheus", ("prometheus-client",), "prometheus_client", "pip install 'kannuki[prometheus]'"),
)


def _distribution_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _driver_report(store: str, distributions: tuple[str, ...], module: str, hint: str) -> dict[str, Any]:
    """What is installed for one store: versions of its distributions, and whether the driver imports."""
    found = {name: v for name in distributions if (v := _distribution_version(name)) is not None}
    report: dict[str, Any] = {"store": store, "installed": bool(found), "versions": found}
    if not found:
        report["note"] = f"not installed: {hint}"
        return report
    try:
        imported = importlib.import_module(module)
    except Exception as exc:  # installed but broken (a missing libpq, a wrong build)
        report["note"] = f"installed but does not import: {type(exc).__name__}: {exc}"
        return report
    if module == "psycopg":
        try:
            libpq = imported.pq.version()  # e.g. 160004 for 16.4
            report["note"] = f"libpq {libpq // 10000}.{libpq % 100} ({imported.pq.__impl__} implementation)"
        except Exception:  # a psycopg without pq details: the versions say enough
            pass
    return report


def info() -> dict[str, Any]:
    """What ``kannuki info`` reports, as a dict (also its ``--json`` output)."""
    import platform
    import sqlite3

    core = kannuki._core
    stdlib = [
        {"store": "memory", "installed": True, "versions": {}, "note": "built in"},
        {
            "store": "sqlite",
            "installed": True,
            "versions": {"sqlite3": sqlite3.sqlite_version},
            "note": "standard library",
        },
        {
            "store": "file",
            "installed": os.name == "posix",
            "versions": {},
            "note": "standard library (flock)" if os.name == "posix" else "POSIX only",
        },
    ]
    return {
        "version": kannuki.__version__,
        "location": os.path.dirname(os.path.abspath(kannuki.__file__)),
        "python": f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        "core": "native" if kannuki.NATIVE else "pure",
        "core_file": getattr(core.IMPLEMENTATION, "__file__", None),
        "fallback_reason": core.FALLBACK_REASON,
        "drivers": [_driver_report(*driver) for driver in DRIVERS] + stdlib,
    }


def _cmd_info(args: argparse.Namespace) -> int:
    report = info()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"kannuki {report['version']} ({report['location']})")
    print(f"python:  {report['python']}")
    if report["core"] == "native":
        print(f"core:    native, compiled ({report['core_file']})")
    else:
        print(f"core:    pure Python: {report['fallback_reason']}")
        if not (report["fallback_reason"] or "").startswith("KANNUKI_NO_EXTENSIONS"):
            print("         (it works the same, only slower; reinstall with a C compiler for the native one)")
    print("drivers:")
    for driver in report["drivers"]:
        versions = ", ".join(f"{name} {version}" for name, version in driver["versions"].items())
        details = "; ".join(part for part in (versions, driver.get("note")) if part)
        print(f"  {driver['store']:<11} {details}")
    return 0


def _error(message: str) -> None:
    print(f"kannuki: {message}", file=sys.stderr, flush=True)


def _locker(args: argparse.Namespace, **options: Any) -> kannuki.Locker:
    url = args.url or os.environ.get("KANNUKI_URL") or None
    if url is None:
        url = default_url()
        os.makedirs(os.path.dirname(url[len("sqlite:///") :]), mode=0o700, exist_ok=True)
    return kannuki.Locker(url, key_prefix=args.prefix, **options)


def _who(holders: Sequence[Holder]) -> str:
    return "; ".join(h.describe() for h in holders) if holders else "another holder"


# -- verbs --------------------------------------------------------------------------


def _cmd_id(args: argparse.Namespace) -> int:
    print(kannuki.lock_id(args.key, args.prefix))
    return 0


def _cmd_held(args: argparse.Namespace) -> int:
    with _locker(args) as locker:
        held = locker.held(args.key)
        if not args.quiet:
            if held:
                holders = _holders_quietly(locker, args.key)
                print(f"{args.key}: held by {_who(holders)}")
            else:
                print(f"{args.key}: free")
    return 0 if held else EXIT_FREE


def _cmd_list(args: argparse.Namespace) -> int:
    with _locker(args) as locker:
        holders = locker.list_held()
        note = locker.backend.listing_note()
    if args.json:
        for h in holders:
            print(json.dumps({f: getattr(h, f) for f in h.__dataclass_fields__}))
        return 0
    if not holders:
        print(
            f"no locks held in {locker.backend.describe()}" if note is None else f"no locks visible: {note}"
        )
        return 0

    def when(t: float | None) -> str:
        return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))

    rows = [("NAME", "LOCK ID", "TOKEN", "PID", "HOST", "SINCE", "EXPIRES")] + [
        (
            h.name + (" [shared]" if h.shared else ""),
            str(h.lock_id),
            str(h.token or "-"),
            str(h.pid or "-"),
            h.host or "-",
            when(h.since),
            when(h.expires_at),
        )
        for h in holders
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip())
    if note is not None:
        print(f"(not shown: {note})")
    return 0


def _cmd_break(args: argparse.Namespace) -> int:
    with _locker(args) as locker:
        holders = locker.holders(args.key)
        if not args.yes:
            who = _who(holders) if holders else "nobody kannuki can see"
            if not (sys.stdin.isatty() and sys.stderr.isatty()):
                _error(f"{args.key!r} is held by {who}; pass --yes to break it")
                return EXIT_USAGE
            answer = input(f"break the lock {args.key!r} held by {who}? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                _error("not broken")
                return EXIT_FREE
        freed = locker.force_release(args.key, terminate=True)
    print(
        f"broke {args.key!r}: {freed} hold{'s' if freed != 1 else ''} freed"
        if freed
        else f"{args.key!r} was free"
    )
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        _error("run: no COMMAND given: kannuki run KEY -- COMMAND [ARGS...]")
        return EXIT_USAGE
    timeout = 0.0 if args.try_once else args.timeout

    def on_lost(lock: Any, reason: str) -> None:
        _error(f"lost the lock {lock.key!r} while the command ran: {reason}")

    with _locker(args, on_lost=on_lost) as locker:
        lock = locker.lock(args.key, shared=args.shared, ttl=args.ttl)
        with _signals_raise():
            acquired = _acquire_telling(lock, timeout)
        if not acquired:
            holders = _holders_quietly(lock)
            how = "at once" if timeout == 0 else f"within {timeout:g}s"
            _error(
                f"lock {args.key!r} is held by {_who(holders)} ({locker.backend.describe()}); not acquired {how}"
            )
            return EXIT_NOT_ACQUIRED
        try:
            status = _run_forwarding(command)
        finally:
            try:
                lock.release()
            except LockLostError as exc:
                _error(str(exc))
    return status


def _holders_quietly(lock: Any, key: str | None = None) -> list[Holder]:
    """``lock.holders()`` (or ``locker.holders(key)``), or [] when the store cannot tell."""
    try:
        return list(lock.holders() if key is None else lock.holders(key))
    except Exception:  # who holds it is a courtesy
        return []


def _acquire_telling(lock: Any, timeout: float | None) -> bool:
    """Acquire; when the wait passes PROGRESS_AFTER and stderr is a terminal, say what we wait for."""
    if timeout == 0:
        return bool(lock.acquire(blocking=False))
    if not sys.stderr.isatty() or (timeout is not None and timeout <= PROGRESS_AFTER):
        return bool(lock.acquire(timeout=timeout) if timeout is not None else lock.acquire())
    if lock.acquire(timeout=PROGRESS_AFTER):
        return True
    _error(f"waiting for the lock {lock.key!r}, held by {_who(_holders_quietly(lock))}")
    if timeout is None:
        return bool(lock.acquire())
    return bool(lock.acquire(timeout=timeout - PROGRESS_AFTER))


class _signals_raise:
    """While waiting for the lock, SIGTERM / SIGHUP end kannuki cleanly (nothing left held)."""

    def __enter__(self) -> None:
        self._saved = {}
        for name in ("SIGTERM", "SIGHUP"):
            signum = getattr(signal, name, None)
            if signum is not None:
                self._saved[signum] = signal.signal(signum, self._raise)

    @staticmethod
    def _raise(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)


def _run_forwarding(command: list[str]) -> int:
    """Run ``command``, forwarding SIGINT/SIGTERM/SIGHUP to it; its exit status (128+N for signal N)."""
    try:
        child = subprocess.Popen(command)
    except FileNotFoundError:
        _error(f"command not found: {command[0]}")
        return EXIT_NOT_FOUND
    except OSError as exc:
        _error(f"cannot run {command[0]}: {exc.strerror or exc}")
        return EXIT_CANNOT_RUN

    def forward(signum: int, frame: Any) -> None:
        # Ctrl-C at a terminal already reached the child (same foreground process group): don't send it twice.
        if signum == signal.SIGINT and _terminal_sent_it():
            return
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass

    saved = {}
    for name in FORWARDED_SIGNALS:
        signum = getattr(signal, name, None)
        if signum is not None:
            saved[signum] = signal.signal(signum, forward)
    try:
        returncode = child.wait()
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
    return 128 - returncode if returncode < 0 else returncode


def _terminal_sent_it() -> bool:
    try:
        return os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False


VERBS = {
    "run": _cmd_run,
    "id": _cmd_id,
    "held": _cmd_held,
    "list": _cmd_list,
    "break": _cmd_break,
    "info": _cmd_info,
}


def _unknown_options(verb_parser: argparse.ArgumentParser, unknown: Sequence[str]) -> str:
    """The error for options ``verb_parser`` does not know, with the closest one it does."""
    import difflib

    options = [o for action in verb_parser._actions for o in action.option_strings if o.startswith("--")]
    message = f"unrecognized arguments: {' '.join(unknown)}"
    first = next((u.split("=", 1)[0] for u in unknown if u.startswith("--")), None)
    close = difflib.get_close_matches(first, options, n=1) if first else []
    return message + (f" (did you mean {close[0]}?)" if close else "")


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """parse_args, but an unknown option is reported with its verb's usage (``kannuki run: ...``)."""
    args, unknown = parser.parse_known_args(argv)
    verb_parser: argparse.ArgumentParser = args.verb_parser
    if unknown:
        verb_parser.error(_unknown_options(verb_parser, unknown))
    if args.verb == "run" and args.command and args.command[0] != "--" and args.command[0].startswith("-"):
        # `kannuki run KEY --timeout 5 -- cmd`: everything after KEY is the command; an option there
        # is a misplaced one, not a program to run.
        option = args.command[0].split("=", 1)[0]
        known = any(option in action.option_strings for action in verb_parser._actions)
        verb_parser.error(
            (f"{option} after KEY" if known else _unknown_options(verb_parser, [args.command[0]]))
            + ": run's options go before KEY, the command after --: kannuki run [OPTIONS] KEY -- COMMAND..."
        )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``kannuki`` command line with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    args = _parse(parser, argv)
    try:
        return VERBS[args.verb](args)
    except (ConfigurationError, NotSupportedError, TypeError, ValueError) as exc:
        _error(str(exc))
        return EXIT_USAGE
    except BackendError as exc:
        cause = (
            f" ({exc.__cause__})" if exc.__cause__ is not None and str(exc.__cause__) not in str(exc) else ""
        )
        _error(f"the lock store failed: {exc}{cause}")
        return EXIT_BACKEND
    except KeyboardInterrupt:
        return 128 + signal.SIGINT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
