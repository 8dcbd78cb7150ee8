"""What every figure of the report shares: the :class:`Figure` record, colours, the matplotlib
setup (imported on first use: ``import demix.report`` stays light), panel grids, the atomic save
and capability axis labels."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from demix.errors import DemixError
from demix.report.data import RunData

#: Colours of the three mixtures compared everywhere (colour-blind safe, Okabe-Ito).
COLORS = {"chosen": "#D55E00", "natural": "#0072B2", "uniform": "#009E73"}
ROUND_COLORS = ["#0072B2", "#E69F00", "#CC79A7", "#009E73", "#56B4E9", "#F0E442", "#000000"]
DPI = 110


@dataclass
class Figure:
    """One figure of the report."""

    name: str
    title: str
    caption: str
    path: Path


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, with the report's style."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({
        # Sizes chosen for a 3-panel figure shrunk to the ~1100 px column of report.html.
        "font.size": 12, "axes.titlesize": 13, "axes.labelsize": 12, "legend.fontsize": 11,
        "xtick.labelsize": 11, "ytick.labelsize": 11, "axes.spines.top": False, "axes.spines.right": False,
        "axes.grid": True, "grid.alpha": 0.3, "figure.dpi": DPI,
    })
    return plt


def grid(n: int, max_cols: int = 3, size: tuple[float, float] = (4.6, 3.8)) -> tuple[Any, Any, list[Any]]:
    """(pyplot, figure, the first ``n`` axes) of a grid of ``n`` panels; the spare panels are hidden."""
    plt = pyplot()
    cols = 2 if (n == 4 and max_cols == 3) else min(max_cols, max(1, n))  # 2 x 2 beats 3 + 1
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return plt, fig, list(axes.flat[:n])


def save(fig: Any, path: Path, rect: tuple[float, float, float, float] | None = None) -> None:
    """Lay out, write atomically (a crash leaves the old PNG) and close a figure; ``rect``: the
    part of the figure the axes may use (room for a figure-level legend)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    if rect is None:
        fig.tight_layout()
    else:
        fig.tight_layout(rect=rect)
    fig.savefig(tmp, dpi=DPI)
    tmp.replace(path)
    import matplotlib.pyplot as plt

    plt.close(fig)


def capability_unit(data: RunData, capability: str) -> str:
    """What a capability's score is, for axis labels: e.g. "-bits per byte" for held-out loss."""
    try:
        from demix.evaluation import resolve_benchmarks, resolve_capabilities

        benches = {b.name: b for b in resolve_benchmarks(data.config)}
        cap = next(c for c in resolve_capabilities(data.config, list(benches.values())) if c.name == capability)
        metrics = {(benches[n].metric, benches[n].higher_is_better) for n in cap.weights}
    except (DemixError, StopIteration, KeyError):
        return "score"
    if len(metrics) != 1:
        return "weighted score"
    metric, hib = metrics.pop()
    name = (metric or "score").replace("_", " ")
    return name if hib else f"-{name}"


def capability_axis(data: RunData, capability: str, prefix: str = "") -> str:
    """An axis label naming a capability and its unit."""
    return f"{prefix}{capability} ({capability_unit(data, capability)})"
