"""The report of a run: ``report/report.html`` (self-contained, figures embedded as base64 PNG),
``report/report.md`` and ``report/figures/*.png``.

Everything is read from the run directory (:mod:`demix.report.data`, the one module that reads
the run's files), so the report can be rebuilt at any time (``demix report RUN_DIR``):

- ``best_mixture.json``: the chosen mixture (its data mixture, what to train on, and its
  component weights, the merge coefficients), its predicted scores with CV errors, the natural
  (token-proportional) and uniform baseline mixtures (each shown at its nearest reachable data
  mixture when no proxy stands for it), and the reachable region; where recorded, the
  ensemble's intervals at the chosen mixture and its measured proxy beside the prediction
  (:mod:`demix.report.chosen`);
- the store: every evaluated merged proxy (component weights, measured scores, round);
- ``search/round_<r>/``: ``cv.json`` (predictor quality per round), ``pool.npz``,
  ``selection.json`` and ``pareto.csv`` of the last round;
- the base and components (merge-validity audit, :func:`demix.fidelity.audit.audit_components`;
  ``fidelity/audit.json`` is used instead when the fidelity stage wrote one);
- ``fidelity/fidelity.json`` when the fidelity stage ran: its :class:`demix.fidelity.FidelityReport`
  per proxy kind (proxy vs reference scores per capability) and its summary rows (macro rho and
  FLOPs per proxy kind, for rho vs compute), and ``fidelity/scores.json`` with the last round's
  predictors: whether the search's objective ranks the reference models as they measure;
- ``timings.json``: stage wall times.

Predicted-vs-measured scatter plots use out-of-fold predictions (each proxy predicted by a
predictor that never saw it), recomputed with :func:`demix.predictors.cross_validate` on the
stored evaluations, with the same folds and seed as the search, so the rho shown is the CV rho
of ``cv.json``.

Modules: :mod:`~demix.report.data` (reading), :mod:`~demix.report.figures` (the figures in
order; drawn by :mod:`~demix.report.figures_search` and :mod:`~demix.report.figures_fidelity`),
:mod:`~demix.report.tables` (table rows), :mod:`~demix.report.chosen` (the chosen mixture's
check), :mod:`~demix.report.render` (HTML and Markdown).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from demix.config import RunConfig
from demix.report.data import RunData, load_run, out_of_fold
from demix.report.plotting import Figure
from demix.rundir import RunDir, atomic_write_text

log = logging.getLogger("demix.report")


@dataclass
class ReportFiles:
    """What :func:`write_report` wrote."""

    html: Path
    markdown: Path
    figures: list[Figure] = field(default_factory=list)


def write_report(run: RunDir, config: RunConfig | None = None) -> ReportFiles:
    """Build every figure and write ``report/report.html``, ``report/report.md`` and
    ``report/figures/*.png``. Files are replaced atomically, so a crash leaves the old report."""
    from demix.report.figures import draw_figures
    from demix.report.render import render_html, render_markdown

    data = load_run(run, config)
    figures = draw_figures(data, run.report_figures)
    atomic_write_text(run.report_markdown, render_markdown(data, figures))
    atomic_write_text(run.report_html, render_html(data, figures))
    log.info("report: %d figures -> %s", len(figures), run.report_html)
    return ReportFiles(run.report_html, run.report_markdown, list(figures.values()))


__all__ = ["Figure", "ReportFiles", "RunData", "load_run", "out_of_fold", "write_report"]
