"""Draw docs/_static/ratios.svg, the bar chart of benchmarks.md's "kannuki / floor" table.

Run by conf.py at every build (so the plot always shows the table's numbers); plain SVG, no
plotting library. Bars are on a log scale around 1 (the floor): left of the line is faster than
the floor, right of it slower.
"""

from __future__ import annotations

import math
import re
from html import escape
from pathlib import Path

HERE = Path(__file__).resolve().parent


def rows(page: Path) -> list[tuple[str, float]]:
    """(operation, ratio) for each row of the table that follows the "ratios:" marker."""
    text = page.read_text(encoding="utf-8")
    table = text[text.index("<!-- ratios:") :].split("\n\n", 2)[1]
    found = []
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        found.append((re.sub(r"`", "", cells[0]), float(cells[-1])))
    return found


def svg(data: list[tuple[str, float]]) -> str:
    label_w, plot_w, bar_h, gap, top = 330, 420, 18, 8, 30
    low, high = -0.5, math.log10(max(r for _, r in data)) + 0.3  # log10 range shown
    x = lambda ratio: label_w + (math.log10(ratio) - low) / (high - low) * plot_w  # noqa: E731
    height = top + len(data) * (bar_h + gap) + 30
    out = [
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + plot_w + 60}" height="{height}" '
            'font-family="sans-serif" font-size="12">'
        ),
        f'<text x="{label_w}" y="16" font-weight="bold">kannuki time / floor time (log scale; 1 = the floor)</text>',
    ]
    for tick in (0.5, 1, 2, 5, 10, 20, 50, 100, 200):
        if math.log10(tick) > high:
            break
        tx = x(tick)
        out.append(f'<line x1="{tx:.1f}" y1="{top - 4}" x2="{tx:.1f}" y2="{height - 24}" stroke="#ddd"/>')
        out.append(f'<text x="{tx:.1f}" y="{height - 10}" text-anchor="middle">{tick:g}</text>')
    one = x(1)
    for i, (name, ratio) in enumerate(data):
        y = top + i * (bar_h + gap)
        start, end = sorted((one, x(ratio)))
        colour = "#2a9d8f" if ratio <= 1.1 else ("#e9c46a" if ratio <= 5 else "#e76f51")
        out.append(f'<text x="{label_w - 8}" y="{y + 13}" text-anchor="end">{escape(name)}</text>')
        out.append(
            f'<rect x="{start:.1f}" y="{y}" width="{max(end - start, 1):.1f}" height="{bar_h}" fill="{colour}"/>'
        )
        out.append(f'<text x="{max(end, one) + 4:.1f}" y="{y + 13}">{ratio:g}</text>')
    out.append(f'<line x1="{one:.1f}" y1="{top - 4}" x2="{one:.1f}" y2="{height - 24}" stroke="#333"/>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main() -> None:
    target = HERE / "_static" / "ratios.svg"
    content = svg(rows(HERE / "benchmarks.md"))
    if not target.exists() or target.read_text(encoding="utf-8") != content:
        target.write_text(content, encoding="utf-8")


if __name__ == "__main__":
    main()
