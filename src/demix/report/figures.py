"""The report's figures, in the order the report shows them, and :func:`draw_figures`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from demix.report.data import RunData
from demix.report.figures_fidelity import fig_fidelity, fig_fidelity_compute
from demix.report.figures_search import (
    fig_cv,
    fig_pareto,
    fig_pool,
    fig_predicted_vs_measured,
    fig_weight_histograms,
    fig_weights,
)
from demix.report.plotting import Figure

FigureMaker = Callable[[RunData, Path], Figure | None]

#: Name (also the PNG's file name: ``figures/<name>.png``) and drawing function of every figure.
FIGURES: tuple[tuple[str, FigureMaker], ...] = (
    ("weights", fig_weights),
    ("predicted_vs_measured", fig_predicted_vs_measured),
    ("cv_quality", fig_cv),
    ("weight_histograms", fig_weight_histograms),
    ("pool_scores", fig_pool),
    ("pareto", fig_pareto),
    ("fidelity_scatter", fig_fidelity),
    ("fidelity_compute", fig_fidelity_compute),
)


def draw_figures(data: RunData, directory: Path) -> dict[str, Figure]:
    """Draw every figure the run has data for into ``directory`` (by name, in report order)."""
    figures: dict[str, Figure] = {}
    for name, make in FIGURES:
        fig = make(data, directory / f"{name}.png")
        if fig is not None:
            figures[name] = fig
    return figures


__all__ = ["FIGURES", "Figure", "draw_figures"]
