"""matplotlib set up once for the plots of the reports, the dashboard and the demo: no display,
PNG to a file (its folder made) or to a binary file object (the dashboard draws into memory)."""

from __future__ import annotations

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
