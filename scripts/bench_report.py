#!/usr/bin/env python3
"""Turn saved pytest-benchmark results into the markdown ratio table the README shows.

Reads ``--benchmark-json`` files or ``--benchmark-autosave`` files (a directory means its newest
``*.json``, searched recursively, e.g. ``.benchmarks``). Per benchmark group it prints every
entry's time, its ratio to the floor (the fastest entry whose param id starts with ``floor-``)
and to the best peer (the fastest ``peer-`` entry). The naming convention is documented at the
top of ``benchmarks/conftest.py``.

    python scripts/bench_report.py results.json            # mean (the default statistic)
    python scripts/bench_report.py .benchmarks --stat median
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROLES = ("floor", "kannuki", "peer")
STATS = ("mean", "median", "min")


def role_of(entry: dict[str, Any]) -> str:
    """``floor``, ``kannuki``, ``peer``, or ``other`` from the entry's param id prefix."""
    param = entry.get("param") or ""
    for role in ROLES:
        if param.startswith(role + "-"):
            return role
    return "other"


def load(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """The pytest-benchmark JSON documents named by ``paths`` (a directory: its newest file)."""
    documents = []
    for given in paths:
        path = given
        if given.is_dir():
            candidates = sorted(given.rglob("*.json"), key=lambda p: p.stat().st_mtime)
            if not candidates:
                raise SystemExit(f"bench_report: no *.json under {given}")
            path = candidates[-1]
        with path.open(encoding="utf-8") as handle:
            documents.append(json.load(handle))
    return documents


def _seconds(value: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value / 1e-9:.3g} ns"


def _ratio(value: float, reference: float | None) -> str:
    if not reference:
        return "-"
    ratio = value / reference
    return f"{ratio:.3g}x" if ratio < 1000 else f"{ratio:.0f}x"


def group_table(group: str, entries: list[dict[str, Any]], stat: str) -> list[str]:
    """Markdown lines for one group, fastest entry first."""

    def time_of(entry: dict[str, Any]) -> float:
        return float(entry["stats"][stat])

    def fastest(role: str) -> dict[str, Any] | None:
        matching = [e for e in entries if role_of(e) == role]
        return min(matching, key=time_of) if matching else None

    floor, best_peer = fastest("floor"), fastest("peer")
    floor_time = time_of(floor) if floor else None
    peer_time = time_of(best_peer) if best_peer else None
    floor_label = f" ({floor['param']})" if floor else ""
    peer_label = f" ({best_peer['param']})" if best_peer else ""
    lines = [
        f"**{group}**",
        "",
        f"| contender | {stat} | / floor{floor_label} | / best peer{peer_label} |",
        "|---|---:|---:|---:|",
    ]
    for entry in sorted(entries, key=time_of):
        name = entry.get("param") or entry["name"]
        if role_of(entry) == "kannuki":
            name = f"**{name}**"
        value = time_of(entry)
        lines.append(
            f"| {name} | {_seconds(value)} | {_ratio(value, floor_time)} | {_ratio(value, peer_time)} |"
        )
    return [*lines, ""]


def report(documents: list[dict[str, Any]], stat: str = "mean") -> str:
    """The whole markdown report: a header with date and machine, then one table per group."""
    lines = []
    for document in documents:
        machine = document.get("machine_info", {})
        cpu = machine.get("cpu", {})
        lines.append(
            f"Measured {document.get('datetime', '?')[:16].replace('T', ' ')} UTC on "
            f"{cpu.get('brand_raw') or machine.get('processor') or machine.get('machine', '?')} "
            f"({cpu.get('count', '?')} CPUs), {machine.get('python_implementation', '')} "
            f"{machine.get('python_version', '')}, {machine.get('system', '')}; "
            f"pytest-benchmark {document.get('version', '?')}. Lower is better; ratios of the {stat} time."
        )
        build = machine.get("kannuki")
        if isinstance(build, dict):
            lines.append("")
            version, core, where = (build.get(k, "?") for k in ("version", "core", "from"))
            lines.append(f"kannuki {version}, core: {core}, from {where}.")
        else:
            lines.append("")
            lines.append("kannuki core: not recorded (results older than the benchmarks' machine-info hook).")
    lines.append("")
    groups: dict[str, list[dict[str, Any]]] = {}
    for document in documents:
        for entry in document.get("benchmarks", []):
            groups.setdefault(entry.get("group") or entry["fullname"].split("[")[0], []).append(entry)
    if not groups:
        lines.append("(no benchmark results: were the benchmarks run with --benchmark-disable?)")
    for group in sorted(groups):
        lines.extend(group_table(group, groups[group], stat))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="pytest-benchmark JSON files or directories")
    parser.add_argument("--stat", choices=STATS, default="mean", help="statistic to compare (default: mean)")
    args = parser.parse_args(argv)
    print(report(load(args.paths), args.stat))
    return 0


if __name__ == "__main__":
    sys.exit(main())
