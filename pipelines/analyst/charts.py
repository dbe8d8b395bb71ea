"""The report's charts as inline SVG drawn locally (no scripts, no tiles, no network), and HTML escaping."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any


def esc(value: Any) -> str:
    """Escape any value for HTML text or a quoted attribute (``None`` -> empty)."""
    return "" if value is None else html.escape(str(value), quote=True)


def _money(minor: Any) -> str:
    return f"{(minor or 0) / 100:,.2f}"


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    mag = 10 ** len(str(int(v))) / 10
    for step in (1, 2, 2.5, 5, 10):
        if v <= step * mag:
            return step * mag
    return 10 * mag


def svg_daily(days: Sequence[Mapping[str, Any]], width: int = 460, height: int = 170) -> str:
    """Bars: transactions per day (declined part darker); line: approved amount per day."""
    if not days:
        return '<p class="muted">No transactions.</p>'
    left, right, top, bottom = 40, 56, 10, 36
    w, h = width - left - right, height - top - bottom
    n = len(days)
    cmax = _nice_max(max(d["txn_count"] for d in days))
    amax = _nice_max(max(d["approved_amount_minor"] for d in days) / 100)
    bw = w / n
    parts = [
        (
            f'<svg role="img" viewBox="0 0 {width} {height}" width="100%" '
            f'aria-label="daily volume and amounts">'
        )
    ]
    for frac in (0, 0.5, 1):
        y = top + h - frac * h
        parts.append(
            f'<line x1="{left}" x2="{left + w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e4e7eb"/>'
        )
        parts.append(
            f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{cmax * frac:g}</text>'
        )
        parts.append(f'<text x="{left + w + 4}" y="{y + 4:.1f}">{amax * frac:,.0f}</text>')
    pts = []
    for i, d in enumerate(days):
        x = left + i * bw
        th = d["txn_count"] / cmax * h
        dh = d["declined_count"] / cmax * h
        tip = esc(
            f"{d['day']}: {d['txn_count']} txns, {d['declined_count']} declined, "
            f"approved {_money(d['approved_amount_minor'])}"
        )
        parts.append(
            f"<g><title>{tip}</title>"
            f'<rect x="{x + 1:.1f}" y="{top + h - th:.1f}" width="{max(bw - 2, 1):.1f}" '
            f'height="{th:.1f}" fill="#90caf9"/>'
            f'<rect x="{x + 1:.1f}" y="{top + h - dh:.1f}" width="{max(bw - 2, 1):.1f}" '
            f'height="{dh:.1f}" fill="#e57373"/></g>'
        )
        pts.append(f"{x + bw / 2:.1f},{top + h - d['approved_amount_minor'] / 100 / amax * h:.1f}")
    parts.append(
        f'<polyline points="{" ".join(pts)}" fill="none" stroke="#1565c0" stroke-width="2"/>'
    )
    for i, anchor in sorted({(0, "start"), (n - 1, "end")}):
        x = left + i * bw + (0 if anchor == "start" else bw)
        parts.append(
            f'<text x="{x:.1f}" y="{top + h + 13}" text-anchor="{anchor}">'
            f"{esc(days[i]['day'])}</text>"
        )
    parts.append(
        f'<text x="{left}" y="{height - 3}">bars: transactions (red: declined); line: '
        "approved amount (right axis)</text></svg>"
    )
    return "".join(parts)


def svg_distance(
    rows: Sequence[Mapping[str, Any]],
    geofence_m: float | None,
    width: int = 460,
    height: int = 170,
) -> str:
    """Median and maximum distance (km) of reported locations from the registered address."""
    if not rows:
        return '<p class="muted">No reported locations.</p>'
    left, right, top, bottom = 52, 12, 10, 36
    w, h = width - left - right, height - top - bottom
    n = len(rows)
    top_km = max(r["max_m"] or 0 for r in rows) / 1000
    if geofence_m:
        top_km = max(top_km, geofence_m / 1000)
    kmax = _nice_max(top_km)
    step = w / max(n - 1, 1)

    def xy(i: int, m: float | None) -> str:
        return f"{left + i * step:.1f},{top + h - (m or 0) / 1000 / kmax * h:.1f}"

    parts = [
        (
            f'<svg role="img" viewBox="0 0 {width} {height}" width="100%" '
            'aria-label="distance from the registered address">'
        )
    ]
    for frac in (0, 0.5, 1):
        y = top + h - frac * h
        parts.append(
            f'<line x1="{left}" x2="{left + w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e4e7eb"/>'
        )
        parts.append(
            f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{kmax * frac:g} km</text>'
        )
    if geofence_m:
        y = top + h - geofence_m / 1000 / kmax * h
        parts.append(
            f'<line x1="{left}" x2="{left + w}" y1="{y:.1f}" y2="{y:.1f}" '
            'stroke="#b71c1c" stroke-dasharray="4 3"><title>geofence</title></line>'
        )
    for key, color in (("max_m", "#e65100"), ("median_m", "#1565c0")):
        pts = " ".join(xy(i, r[key]) for i, r in enumerate(rows))
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2"/>')
    for i, r in enumerate(rows):
        tip = esc(
            f"{r['day']}: median {(r['median_m'] or 0) / 1000:.2f} km, "
            f"max {(r['max_m'] or 0) / 1000:.2f} km, {r['located']} located"
        )
        parts.append(
            f'<circle cx="{xy(i, r["max_m"]).split(",")[0]}" '
            f'cy="{xy(i, r["max_m"]).split(",")[1]}" r="3" fill="#e65100">'
            f"<title>{tip}</title></circle>"
        )
    for i, anchor in sorted({(0, "start"), (n - 1, "end")}):
        parts.append(
            f'<text x="{left + i * step:.1f}" y="{top + h + 13}" text-anchor="{anchor}">'
            f"{esc(rows[i]['day'])}</text>"
        )
    parts.append(
        f'<text x="{left}" y="{height - 3}">orange: farthest; blue: median; dashed red: '
        "geofence of the policy</text></svg>"
    )
    return "".join(parts)


def svg_hbars(
    items: Sequence[tuple[str, int]], *, highlight: Sequence[str] = (), width: int = 460
) -> str:
    """Horizontal bars (label, count); labels in ``highlight`` drawn in red."""
    if not items:
        return '<p class="muted">Nothing to show.</p>'
    label_w, row_h = 170, 20
    height = row_h * len(items) + 6
    vmax = max(c for _, c in items) or 1
    w = width - label_w - 50
    parts = [f'<svg role="img" viewBox="0 0 {width} {height}" width="100%">']
    for i, (label, count) in enumerate(items):
        y = 3 + i * row_h
        bw = count / vmax * w
        color = "#e57373" if label in highlight else "#90caf9"
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end">{esc(label)}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{max(bw, 1):.1f}" height="{row_h - 6}" '
            f'fill="{color}"><title>{esc(label)}: {count}</title></rect>'
            f'<text x="{label_w + bw + 4:.1f}" y="{y + 14}">{count}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def svg_sparkline(values: Sequence[int], width: int = 140, height: int = 28) -> str:
    """A small trend line with the last value marked."""
    if not values:
        return ""
    vmax = max(values) or 1
    step = (width - 6) / max(len(values) - 1, 1)
    pts = [(3 + i * step, height - 3 - v / vmax * (height - 6)) for i, v in enumerate(values)]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
    x, y = pts[-1]
    return (
        f'<svg role="img" viewBox="0 0 {width} {height}" width="{width}" height="{height}">'
        f"<title>{esc(', '.join(str(v) for v in values))}</title>"
        f'<polyline points="{line}" fill="none" stroke="#1565c0" stroke-width="1.5"/>'
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="#1565c0"/></svg>'
    )
