"""The throughput chart, drawn as an inline SVG on the server: no chart library."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from markupsafe import Markup, escape

from jobworker.application.fleet import ThroughputBucket

WIDTH, HEIGHT, AXIS = 720, 160, 28


def throughput_svg(buckets: Sequence[ThroughputBucket]) -> Markup:
    """Bars of jobs/s per bucket, oldest left; each bar's title gives its figures."""
    if not buckets:
        return Markup("")
    peak = max(1.0, *(b.jobs_per_s for b in buckets))
    bar_w = WIDTH / len(buckets)
    plot_h = HEIGHT - AXIS
    bars = []
    for i, bucket in enumerate(buckets):
        h = plot_h * bucket.jobs_per_s / peak
        at = datetime.fromtimestamp(bucket.start_ms / 1000, UTC).strftime("%H:%M:%S")
        title = escape(f"{at} UTC: {bucket.jobs} jobs, {bucket.jobs_per_s:.1f}/s")
        bars.append(
            f'<rect x="{i * bar_w + 1:.1f}" y="{plot_h - h:.1f}" width="{max(bar_w - 2, 1):.1f}"'
            f' height="{h:.1f}" class="bar"><title>{title}</title></rect>'
        )
    first = datetime.fromtimestamp(buckets[0].start_ms / 1000, UTC).strftime("%H:%M")
    # Safe: every value put in is a number, a time, or escaped (the titles).
    return Markup(  # noqa: S704
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img"'
        f' aria-label="jobs finished per second">'
        f'<text x="2" y="12" class="axis">{peak:.1f}/s</text>'
        f'<line x1="0" y1="{plot_h}" x2="{WIDTH}" y2="{plot_h}" class="base"/>'
        f"{''.join(bars)}"
        f'<text x="2" y="{HEIGHT - 8}" class="axis">{first} UTC</text>'
        f'<text x="{WIDTH - 2}" y="{HEIGHT - 8}" class="axis" text-anchor="end">now</text>'
        "</svg>"
    )
