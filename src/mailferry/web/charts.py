"""Bar charts as inline SVG, drawn on the server: no chart library, no script.

Colours come from CSS classes (``series-0`` …) so the page's style sheet decides them; each bar
carries a ``<title>`` so hovering shows the exact number.
"""

from __future__ import annotations

from html import escape

from markupsafe import Markup

_HEIGHT = 160
_TOP = 10
_BOTTOM = 50  # room for the labels under the axis
_LEFT = 40


def bar_chart(labels: list[str], series: dict[str, list[int]], *, title: str,
              bar_width: int = 10) -> Markup:
    """Grouped bars: one group per label, one bar per series (same order as ``series``)."""
    names = list(series)
    peak = max((v for values in series.values() for v in values), default=0) or 1
    group = bar_width * len(names) + 8
    width = _LEFT + max(len(labels), 1) * group + 10
    out = [f'<svg class="chart" role="img" aria-label="{escape(title)}" '
           f'viewBox="0 0 {width} {_HEIGHT + _TOP + _BOTTOM}" width="{width}" '
           f'height="{_HEIGHT + _TOP + _BOTTOM}" xmlns="http://www.w3.org/2000/svg">',
           f"<title>{escape(title)}</title>",
           f'<line class="axis" x1="{_LEFT}" y1="{_TOP + _HEIGHT}" x2="{width}" '
           f'y2="{_TOP + _HEIGHT}"/>',
           f'<text class="tick" x="{_LEFT - 4}" y="{_TOP + 8}" text-anchor="end">{peak}</text>',
           f'<text class="tick" x="{_LEFT - 4}" y="{_TOP + _HEIGHT}" text-anchor="end">0</text>']
    for i, label in enumerate(labels):
        x0 = _LEFT + i * group + 4
        for j, name in enumerate(names):
            value = series[name][i]
            h = round(value / peak * _HEIGHT)
            x = x0 + j * bar_width
            out.append(f'<rect class="series-{j}" x="{x}" y="{_TOP + _HEIGHT - h}" '
                       f'width="{bar_width - 1}" height="{h}"><title>{escape(label)}: '
                       f'{value} {escape(name)}</title></rect>')
        if len(labels) <= 24 or i % max(1, len(labels) // 12) == 0:
            tx, ty = x0, _TOP + _HEIGHT + 12
            out.append(f'<text class="tick" x="{tx}" y="{ty}" transform="rotate(30 {tx} {ty})">'
                       f"{escape(label)}</text>")
    out.append("</svg>")
    return Markup("".join(out))


def legend(names: list[str]) -> Markup:
    items = "".join(f'<span class="key"><span class="swatch series-{j}"></span>'
                    f"{escape(name)}</span>" for j, name in enumerate(names))
    return Markup(f'<div class="legend">{items}</div>')
