"""matplotlib set up once for the plots of the reports, the dashboard and the demo: no display,
PNG to a file (its folder made) or to a binary file object (the dashboard draws into memory)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

# matplotlib is imported inside the functions: it takes seconds to import, and DAG parsing and
# the light stages import the report modules without drawing anything.

DPI = 90
# One colour per phase, the same in every plot that shows phases.
PHASE_COLOURS = {"cold_start": "#dbe9f6", "growth": "#e2f2e0", "maturity": "#fbeed6"}


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display: files and the dashboard only
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: Any) -> Any:
    """Save to a file path (its folder made) or a binary file object; the figure is closed."""
    import matplotlib.pyplot as plt

    if isinstance(path, Path):
        path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    plt.close(fig)
    return path


def accuracy_limits(values: list[float], *, pad: float = 0.05, min_span: float = 0.25) -> tuple[float, float]:
    """The y range of an accuracy plot: the measured values with ``pad`` around them, at least
    ``min_span`` wide, on multiples of 0.05 inside [0, 1], so that a few points of gain show as a
    rise rather than a flat line on the whole 0-1 scale. No values: the whole scale."""
    if not values:
        return 0.0, 1.0
    lo, hi = max(0.0, min(values) - pad), min(1.0, max(values) + pad)
    if hi - lo < min_span:
        mid = (lo + hi) / 2
        lo, hi = max(0.0, mid - min_span / 2), min(1.0, mid + min_span / 2)
        lo, hi = (0.0, min_span) if lo == 0.0 else (1.0 - min_span, 1.0) if hi == 1.0 else (lo, hi)
    return math.floor(lo * 20 + 1e-9) / 20, math.ceil(hi * 20 - 1e-9) / 20
