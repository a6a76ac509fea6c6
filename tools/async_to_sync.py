#!/usr/bin/env python3
"""Generate kannuki's sync modules from their async sources.

The async modules are the one source of truth; each ``X_async.py`` listed in
``SOURCES`` becomes ``X.py`` by these rules, applied to tokens (so layout and
comments survive):

- ``async def`` / ``async with`` / ``async for`` lose ``async``; ``await`` goes.
- Names in ``RENAMES`` are replaced, in code and in docstrings and comments
  (whole words only): ``AsyncLock`` -> ``Lock``, ``asleep`` -> ``sleep`` ...
  The primitive pairs themselves live in ``kannuki._compat``.
- A source may add renames of its own with lines ``# to-sync: AsyncName -> Name``
  (dropped from the output).
- A line whose comment is ``# async-only`` is dropped (with its indented body
  when it opens a block); a line with ``# sync: CODE`` becomes ``CODE``.

The result goes through ``ruff check --fix`` (imports: sorted, unused ones
dropped) and ``ruff format``, so regenerating is deterministic.

    python tools/async_to_sync.py            # rewrite every generated file
    python tools/async_to_sync.py --check    # exit 1 naming each file that is out of date
"""

from __future__ import annotations

import argparse
import io
import re
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "kannuki"

# Async sources, relative to src/kannuki; each X_async.py generates X.py beside it.
SOURCES = [
    "backends/base_async.py",
    "backends/memory_async.py",
    "backends/postgres_async.py",
    "backends/mysql_async.py",
    "backends/redis_async.py",
    "backends/sqlite_async.py",
    "backends/file_async.py",
    "backends/etcd_async.py",
    "_hold_async.py",
    "_lock_async.py",
    "_locker_async.py",
]

# async name -> sync name. Async-only spellings of kannuki's own names and of the drivers'.
RENAMES = {
    # kannuki's API and backends
    "AsyncLocker": "Locker",
    "AsyncLock": "Lock",
    "AsyncMultiLock": "MultiLock",
    "AsyncBackend": "Backend",
    "AsyncHoldKeeper": "HoldKeeper",
    "AsyncMemoryBackend": "MemoryBackend",
    "AsyncPostgresBackend": "PostgresBackend",
    "AsyncMySQLBackend": "MySQLBackend",
    "AsyncRedisBackend": "RedisBackend",
    "AsyncSQLiteBackend": "SQLiteBackend",
    "AsyncFileBackend": "FileBackend",
    "AsyncEtcdBackend": "EtcdBackend",
    "AsyncConnections": "Connections",
    "base_async": "base",
    "memory_async": "memory",
    "postgres_async": "postgres",
    "mysql_async": "mysql",
    "redis_async": "redis",
    "sqlite_async": "sqlite",
    "file_async": "file",
    "etcd_async": "etcd",
    "_hold_async": "_hold",
    "_lock_async": "_lock",
    "_locker_async": "_locker",
    # the primitive pairs of kannuki._compat
    "asleep": "sleep",
    "arun_blocking": "run_blocking",
    "atable_acquire": "table_acquire",
    "atable_release": "table_release",
    "afinish": "finish",
    "AMutex": "Mutex",
    "AWorker": "Worker",
    "AEvent": "Event",
    "acall": "call",
    "aspawn": "spawn",
    "acancelled": "cancelled",
    "asocket_wait": "socket_wait",
    "aclose": "close",
    "aclose_quietly": "close_quietly",
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
    "AsyncIterator": "Iterator",
    "AsyncGenerator": "Generator",
    "asynccontextmanager": "contextmanager",
    # drivers
    "AsyncConnection": "Connection",
    "AsyncConnectionPool": "ConnectionPool",
    "AsyncCursor": "Cursor",
    "AsyncPipeline": "Pipeline",
    "AsyncPubSub": "PubSub",
    "AsyncRedis": "Redis",
    "AsyncMock": "Mock",
}
# Dotted module paths, replaced as text before tokenizing.
MODULE_RENAMES = {
    "redis.asyncio": "redis",
}

_ASYNC_ONLY = "# async-only"
_SYNC_AS = "# sync:"


def header(source: str) -> str:
    return (
        f"# WARNING: generated from src/kannuki/{source} by tools/async_to_sync.py.\n"
        "# Do not edit: change the async source and run `python tools/async_to_sync.py`.\n"
    )


def _logical_lines(text: str) -> list[tuple[int, int, str]]:
    """``(first_row, last_row, marker_comment)`` of each statement or line that a marker applies to.

    A marker on a line of its own (a parameter of a wrapped signature, say) applies to that
    line. A statement that ruff wrapped over several lines carries its trailing comment on
    its closing line (the one that starts with a bracket): that marker applies to the whole
    statement, unless its replacement itself starts with a closing bracket
    (``# sync: ) -> T:``), which replaces the closing line only.
    """
    out: list[tuple[int, int, str]] = []
    first: int | None = None
    marker = ""
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type in (tokenize.NL, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT) and first is None:
            if tok.type == tokenize.COMMENT and (
                tok.string.startswith(_SYNC_AS) or tok.string == _ASYNC_ONLY
            ):
                out.append((tok.start[0], tok.start[0], tok.string))  # a marker alone on its line
            continue
        if first is None:
            first = tok.start[0]
        if tok.type == tokenize.COMMENT and (tok.string.startswith(_SYNC_AS) or tok.string == _ASYNC_ONLY):
            code = tok.line[: tok.start[1]].strip()
            line_only = tok.string[len(_SYNC_AS) :].strip()[:1] in (")", "]", "}")  # "# sync: ) -> T:"
            if not line_only and (tok.start[0] == first or code[:1] in (")", "]", "}")):
                marker = tok.string  # the statement's own trailing comment
            else:
                out.append((tok.start[0], tok.start[0], tok.string))  # one line inside the statement
        if tok.type in (tokenize.NEWLINE, tokenize.ENDMARKER):
            if marker:
                out.append((first, tok.start[0], marker))
            first, marker = None, ""
    return out


def _apply_line_markers(text: str) -> str:
    """Drop ``# async-only`` statements (and the block they open); turn ``# sync: CODE`` ones into CODE."""
    lines = text.splitlines(keepends=True)
    drop: set[int] = set()  # 0-based physical lines
    replace: dict[int, str] = {}
    for first, last, marker in _logical_lines(text):
        rows = range(first - 1, last)
        head = lines[first - 1]
        indent = len(head) - len(head.lstrip())
        if marker == _ASYNC_ONLY:
            drop.update(rows)
            code = "".join(lines[i] for i in rows).split("#", 1)[0].rstrip()
            if code.endswith(":"):  # the block it opens goes too
                i = last
                while i < len(lines) and (
                    not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent
                ):
                    drop.add(i)
                    i += 1
        else:
            drop.update(rows)
            replace[first - 1] = " " * indent + marker[len(_SYNC_AS) :].strip() + "\n"
    out = []
    for i, line in enumerate(lines):
        if i in replace:
            out.append(replace[i])
        elif i not in drop:
            out.append(line)
    return "".join(out)


def _offsets(text: str) -> list[int]:
    starts = [0]
    for line in text.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    return starts


_LOCAL_RENAME = re.compile(r"^# to-sync: (\w+) -> (\w+)\s*$", re.MULTILINE)


def convert(text: str) -> str:
    """The sync text of one async module (before ruff)."""
    renames = dict(RENAMES)
    renames.update(_LOCAL_RENAME.findall(text))
    text = _LOCAL_RENAME.sub("", text)
    word = re.compile(r"\b(" + "|".join(sorted(map(re.escape, renames), key=len, reverse=True)) + r")\b")
    for old, new in MODULE_RENAMES.items():
        text = text.replace(old, new)
    text = _apply_line_markers(text)
    starts = _offsets(text)
    tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    edits: list[tuple[int, int, str]] = []

    def pos(point: tuple[int, int]) -> int:
        return starts[point[0] - 1] + point[1]

    for i, tok in enumerate(tokens):
        if tok.type == tokenize.NAME and tok.string in ("async", "await"):
            following = tokens[i + 1]
            if tok.string == "async" and following.string not in ("def", "with", "for"):
                continue
            edits.append((pos(tok.start), pos(following.start), ""))
        elif tok.type == tokenize.NAME and tok.string in renames:
            edits.append((pos(tok.start), pos(tok.end), renames[tok.string]))
        elif tok.type in (tokenize.STRING, tokenize.COMMENT):
            new = word.sub(lambda m: renames[m.group(1)], tok.string)
            new = new.replace("``await ", "``").replace("async with", "with").replace("async def", "def")
            if new != tok.string:
                edits.append((pos(tok.start), pos(tok.end), new))
    for start, end, new in sorted(edits, reverse=True):
        text = text[:start] + new + text[end:]
    return text


def _ruff() -> list[str]:
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if exe is None:
        sys.exit("tools/async_to_sync.py needs ruff (pip install ruff): it formats the generated files")
    return [exe]


def polish(text: str, filename: str) -> str:
    ruff = _ruff()
    common = ["--stdin-filename", filename, "--config", str(ROOT / "pyproject.toml")]
    fixed = subprocess.run(
        [*ruff, "check", "--fix-only", "--select", "I,F401,RUF022,RUF023", "--quiet", *common, "-"],
        input=text,
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    return subprocess.run(
        [*ruff, "format", "--quiet", *common, "-"],
        input=fixed or text,
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout


def target_of(source: str) -> str:
    assert source.endswith("_async.py"), source
    return source[: -len("_async.py")] + ".py"


def generate(source: str) -> tuple[Path, str]:
    src = PACKAGE / source
    dst = PACKAGE / target_of(source)
    sync = header(source) + convert(src.read_text())
    return dst, polish(sync, str(dst.relative_to(ROOT)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a generated file is stale"
    )
    parser.add_argument("sources", nargs="*", help="only these sources (paths relative to src/kannuki)")
    args = parser.parse_args(argv)
    stale = []
    for source in args.sources or SOURCES:
        if not (PACKAGE / source).exists():
            print(f"{source}: no such async source", file=sys.stderr)
            return 2
        dst, text = generate(source)
        current = dst.read_text() if dst.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(dst.relative_to(ROOT))
        else:
            dst.write_text(text)
            print(f"generated {dst.relative_to(ROOT)}")
    for path in stale:
        print(
            f"{path} is out of date with its async source: run python tools/async_to_sync.py", file=sys.stderr
        )
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
