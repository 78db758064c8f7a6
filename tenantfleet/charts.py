"""The report's two charts as inline SVG, written by hand: bars on lanes along a time axis, and
a histogram on a logarithmic axis. A plotting library's import alone took 0.5-1.0 s of a report
(matplotlib, before); these are a few rectangles, lines and texts each.
"""

import html
import math
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

PLOT_WIDTH = 860
LEFT = 210
"""Room for the lane names."""
RIGHT = 190
"""Room for the legend."""
TOP = 36
BOTTOM = 48
LANE = 22
HISTOGRAM_HEIGHT = 220
GRID = "#e6e6e6"
INK = "#333"


class Bar(NamedTuple):
    """A tuple: a timeline has one for every attempt (or every pixel's worth of them)."""

    start: float
    width: float
    title: str | None = None
    """What a browser shows when the pointer rests on the bar."""


@dataclass(frozen=True)
class Series:
    """Bars of one kind (one colour, one legend entry), by lane index; drawn in the order given,
    so a later series is on top. Its group's id is ``bars-NAME``."""

    name: str
    label: str
    colour: str
    bars: dict[int, list[Bar]] = field(default_factory=dict)


def _number(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _text(
    x: float, y: float, words: str, anchor: str = "start", size: int = 11, upright: bool = False
) -> str:
    """``upright``: read from bottom to top (an axis caption on the left)."""
    turn = f' transform="rotate(-90 {_number(x)} {_number(y)})"' if upright else ""
    return (
        f'<text x="{_number(x)}" y="{_number(y)}" text-anchor="{anchor}"'
        f' font-size="{size}"{turn}>{html.escape(words)}</text>'
    )


def _svg(width: float, height: float, parts: list[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_number(width)}"'
        f' height="{_number(height)}" viewBox="0 0 {_number(width)} {_number(height)}"'
        f' font-family="sans-serif" fill="{INK}">' + "".join(parts) + "</svg>"
    )


def ticks(high: float, count: int = 8) -> list[float]:
    """Round values from 0 to ``high``, about ``count`` of them: steps of 1, 2 or 5 times a power
    of ten."""
    if high <= 0:
        return [0.0]
    rough = high / count
    power = 10 ** math.floor(math.log10(rough))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= rough)
    return [i * step for i in range(int(high / step + 1e-9) + 1)]


def log_ticks(low: float, high: float) -> list[float]:
    """Powers of ten between ``low`` and ``high`` (with 2 and 5 times them when the range spans
    less than three decades)."""
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    decades = [10.0**k for k in range(first, last + 1)]
    steps = (1, 2, 5) if math.log10(high / low) < 3 else (1,)
    return [d * m for d in decades for m in steps if low <= d * m <= high]


def _x_axis(
    at: Sequence[float], place: Callable[[float], float], y: float, caption: str
) -> list[str]:
    """Grid lines, tick labels and the caption of a horizontal axis at height ``y``;
    ``place(value)`` is a value's x."""
    parts = []
    for value in at:
        x = place(value)
        parts.append(
            f'<line x1="{_number(x)}" x2="{_number(x)}" y1="{TOP}" y2="{_number(y + 4)}"'
            f' stroke="{GRID}"/>'
        )
        parts.append(_text(x, y + 16, f"{value:g}", "middle", 10))
    parts.append(
        f'<line x1="{LEFT}" x2="{LEFT + PLOT_WIDTH}" y1="{_number(y)}" y2="{_number(y)}"'
        f' stroke="{INK}"/>'
    )
    parts.append(_text(LEFT + PLOT_WIDTH / 2, y + 36, caption, "middle"))
    return parts


def lanes(
    title: str, lane_names: Sequence[str], series: Sequence[Series], span: float, caption: str
) -> str:
    """Each series' bars on their lanes; the time axis from 0 to ``span`` seconds."""
    span = max(span, 1e-3)
    bottom = TOP + LANE * len(lane_names)

    def place(seconds: float) -> float:
        return LEFT + seconds / span * PLOT_WIDTH

    parts = [_text(LEFT, 20, title, size=13)]
    parts += _x_axis(ticks(span), place, bottom, caption)
    for index, name in enumerate(lane_names):
        parts.append(_text(LEFT - 6, TOP + index * LANE + LANE / 2 + 4, name, "end", 10))
    for kind in series:
        rects = []
        for index, bars in kind.bars.items():
            y = _number(TOP + index * LANE + 3)
            for bar in bars:
                shape = (
                    f'<rect x="{_number(place(bar.start))}" y="{y}"'
                    f' width="{_number(max(bar.width / span * PLOT_WIDTH, 0.5))}"'
                    f' height="{LANE - 6}"'
                )
                rects.append(
                    f"{shape}><title>{html.escape(bar.title)}</title></rect>"
                    if bar.title
                    else f"{shape}/>"
                )
        parts.append(
            f'<g id="bars-{kind.name}" fill="{kind.colour}" shape-rendering="crispEdges">'
            f"{''.join(rects)}</g>"
        )
    parts += _legend([(kind.colour, kind.label) for kind in series])
    return _svg(LEFT + PLOT_WIDTH + RIGHT, bottom + BOTTOM, parts)


def _legend(entries: Sequence[tuple[str, str]]) -> list[str]:
    x = LEFT + PLOT_WIDTH + 16
    parts = []
    for row, (colour, label) in enumerate(entries):
        y = TOP + row * 18
        parts.append(f'<rect x="{x}" y="{y}" width="12" height="12" fill="{colour}"/>')
        parts.append(_text(x + 18, y + 10, label, size=10))
    return parts


def histogram(
    title: str, values: Sequence[float], caption: str, gid: str, colour: str, bins: int = 30
) -> str:
    """How many ``values`` fall in each of ``bins`` bins of equal width on a logarithmic axis
    (a value below a millisecond counts in the first)."""
    low = max(min(values), 1e-3)
    high = max(max(values), low * 1.01)
    ratio = math.log(high / low)
    edges = [low * math.exp(ratio * i / bins) for i in range(bins + 1)]
    counts = [0] * bins
    for value in values:
        counts[min(max(bisect_right(edges, value) - 1, 0), bins - 1)] += 1
    bottom = TOP + HISTOGRAM_HEIGHT
    tallest = max(counts)
    levels = ticks(tallest, 5)
    if len(levels) > 1 and levels[-1] < tallest:  # the axis ends on a tick above the tallest
        levels.append(levels[-1] + levels[1])
    top_level = max(levels[-1], 1)

    def place(value: float) -> float:
        return LEFT + math.log(value / low) / ratio * PLOT_WIDTH

    def height(count: float) -> float:
        return count / top_level * HISTOGRAM_HEIGHT

    def bar_height(count: int) -> float:  # one tenant is still seen
        return max(height(count), 1.0)

    parts = [_text(LEFT, 20, title, size=13)]
    parts += _x_axis(log_ticks(low, high), place, bottom, caption)
    for level in levels:
        y = _number(bottom - height(level))
        parts.append(
            f'<line x1="{LEFT - 4}" x2="{LEFT + PLOT_WIDTH}" y1="{y}" y2="{y}" stroke="{GRID}"/>'
        )
        parts.append(_text(LEFT - 8, bottom - height(level) + 4, f"{level:g}", "end", 10))
    parts.append(_text(LEFT - 44, TOP + HISTOGRAM_HEIGHT / 2, "tenants", "middle", upright=True))
    rects = []
    for index, count in enumerate(counts):
        if count:
            x = place(edges[index])
            rects.append(
                f'<rect x="{_number(x)}" y="{_number(bottom - bar_height(count))}"'
                f' width="{_number(max(place(edges[index + 1]) - x - 1, 0.5))}"'
                f' height="{_number(bar_height(count))}"><title>{count} tenants,'
                f" {edges[index]:.3g}-{edges[index + 1]:.3g} s</title></rect>"
            )
    parts.append(f'<g id="{gid}" fill="{colour}">{"".join(rects)}</g>')
    return _svg(LEFT + PLOT_WIDTH + RIGHT, bottom + BOTTOM, parts)
