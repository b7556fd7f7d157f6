"""Small SVG charts drawn on the server (no script, no CDN: our CSP stays strict)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date

from markupsafe import Markup, escape

WIDTH, HEIGHT = 320, 120
LEFT, RIGHT, TOP, BOTTOM = 4, 316, 14, 100


@dataclass(frozen=True)
class Chart:
    """A chart ready for the page: its SVG, the latest value in words, and every day's value
    as text (a table under it, for screen readers and for anyone who wants the numbers)."""

    key: str
    title: str
    svg: Markup
    latest: str
    rows: list[tuple[str, str]]


def _nice_ceiling(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten at or above `value` (reads well)."""
    if value <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(value))) - 1) if value >= 1 else 1.0
    for step in (1, 2, 2.5, 5, 10):
        if step * magnitude >= value:
            return float(step * magnitude)
    return float(10 * magnitude)


def chart(
    key: str,
    title: str,
    points: Sequence[tuple[date, float | None]],
    text: Callable[[float], str],
    *,
    bars: bool = False,
) -> Chart:
    """A line (states: storage, mailboxes) or bars (counts per day) over the given days; days
    without a value leave a gap."""
    values = [value for _, value in points if value is not None]
    top = _nice_ceiling(max(values, default=0))
    count = max(len(points), 1)
    step = (RIGHT - LEFT) / count

    def x(index: int) -> float:
        return LEFT + step * index + step / 2

    def y(value: float) -> float:
        return BOTTOM - (BOTTOM - TOP) * (value / top)

    shapes: list[str] = []
    if bars:
        width = max(step * 0.7, 1.0)
        for index, (day, value) in enumerate(points):
            if value:
                shapes.append(
                    f'<rect class="chart-bar" x="{x(index) - width / 2:.1f}" y="{y(value):.1f}" '
                    f'width="{width:.1f}" height="{BOTTOM - y(value):.1f}">'
                    f"<title>{day.isoformat()}: {escape(text(value))}</title></rect>"
                )
    else:
        run: list[str] = []
        for index, (_day, value) in enumerate([*points, (date.min, None)]):
            if value is not None:
                run.append(f"{x(index):.1f},{y(value):.1f}")
                continue
            if len(run) == 1:
                cx, cy = run[0].split(",")
                shapes.append(f'<circle class="chart-dot" cx="{cx}" cy="{cy}" r="2"/>')
            elif run:
                shapes.append(f'<polyline class="chart-line" points="{" ".join(run)}"/>')
            run = []
    first = points[0][0].strftime("%b %d") if points else ""
    last = points[-1][0].strftime("%b %d") if points else ""
    top_label = text(top)
    svg = (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="chart-{key}-title" id="chart-{key}">'
        f'<title id="chart-{key}-title">{escape(title)}</title>'
        f'<line class="chart-axis" x1="{LEFT}" y1="{BOTTOM}" x2="{RIGHT}" y2="{BOTTOM}"/>'
        f'<line class="chart-top" x1="{LEFT}" y1="{TOP}" x2="{RIGHT}" y2="{TOP}"/>'
        f'<text class="chart-label" x="{LEFT}" y="{TOP - 4}">{escape(top_label)}</text>'
        f'<text class="chart-label" x="{LEFT}" y="{HEIGHT - 6}">{first}</text>'
        f'<text class="chart-label" x="{RIGHT}" y="{HEIGHT - 6}" text-anchor="end">{last}</text>'
        + "".join(shapes)
        + "</svg>"
    )
    latest_value = next((value for _, value in reversed(points) if value is not None), None)
    rows = [(day.isoformat(), text(value) if value is not None else "—") for day, value in points]
    latest = text(latest_value) if latest_value is not None else "—"
    # Every piece of text in it went through escape(); the rest is numbers we formatted.
    return Chart(key, title, Markup(svg), latest, rows)
