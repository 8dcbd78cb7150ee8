"""`demix report`: figures and tables of a run, as report.html and report.md."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from demix.cli import app
from demix.cli._common import QuietOpt, console, setup_logging


@app.command("report", rich_help_panel="2. Stages, in pipeline order")
def report_cmd(
    run_dir: Annotated[Path, typer.Argument(help="The run directory (output_dir of the config), e.g. runs/demo.")],
    quiet: QuietOpt = False,
) -> None:
    """Write RUN_DIR/report/report.html (self-contained, open it in a browser) and report.md with figures.

    Shows the chosen mixture beside the natural (token-proportional) and uniform mixtures, each as its data mixture and its component weights, predicted vs measured scores of the evaluated proxies, the candidate pool and its Pareto front, the evaluated component weights per domain, predictor quality, the merge-validity audit of the components and, when the fidelity stage ran, proxy vs reference-model scores. Needs a finished search (best_mixture.json); `demix run` writes the report at its end.
    """
    from demix.report import write_report
    from demix.rundir import RunDir

    run = RunDir(run_dir)
    if run.root.is_dir():
        setup_logging(run, quiet)
    files = write_report(run)
    console.quiet = False
    console.print(f"wrote {files.html} and {files.markdown} ({len(files.figures)} figures in {run.report_figures})")
