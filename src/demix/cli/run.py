"""`demix run` and `demix demo`: the whole pipeline in one command."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from demix.cli import app
from demix.cli._common import ConfigArg, OverridesOpt, QuietOpt, console, open_run, start_run
from demix.config import RunConfig
from demix.rundir import RunDir

if TYPE_CHECKING:
    from demix.search import BestMixture

DeviceOpt = Annotated[
    str, typer.Option(help="Device for proxies and evaluation: auto (evaluation.device), cpu, cuda, cuda:0, ...")
]


def comparison_table(best: BestMixture) -> Any:
    """The chosen mixture beside the baseline mixtures as a rich Table (rows from
    :func:`demix.search.comparison_rows`, which the report renders too): a block of data-mixture
    rows, one of component-weight rows, then the predicted capabilities. The caption says what
    the two mixtures are, the data mixtures the proxies stand for and which baselines are shown
    at their nearest reachable data mixture (:func:`demix.report.tables.mixture_notes`)."""
    from rich.markup import escape
    from rich.table import Table

    from demix.report.tables import mixture_notes
    from demix.search import comparison_rows

    header, rows = comparison_rows(best)
    k, predictor = best.top_k, best.predictor
    caption = ["natural = token-proportional.", *mixture_notes(best)]
    if predictor:
        caption.append(
            f"Predicted scores are higher-is-better; CV = {predictor.cv_folds}-fold cross-validation of the "
            f"{predictor.kind} predictor on {predictor.n} evaluated proxies."
        )
    table = Table(
        title=f"chosen mixture: mean of the top {k.k:,} of {k.pool_size:,} candidates" if k else "chosen mixture",
        caption=escape("\n".join(caption)),  # domain names are text, never markup
        caption_justify="left",
    )
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right", no_wrap=i == 0)
    # One section per kind of row: "data <domain>", "component <domain>", "predicted <capability>".
    kind = None
    for row in rows:
        first = row[0].split(" ", 1)[0]
        if kind is not None and first != kind:
            table.add_section()
        kind = first
        table.add_row(*row)
    return table


def _run_and_summarise(cfg: RunConfig, run: RunDir, quiet: bool, device: str, command: str) -> None:
    from demix.pipeline import run_pipeline

    result = run_pipeline(
        cfg, run, quiet, console=console, device=None if device == "auto" else device, command=command
    )
    console.quiet = False  # the summary is the result: shown even with --quiet
    console.rule("[bold]result")
    console.print(comparison_table(result.best))
    stages = ", ".join(f"{t.stage} {'skipped' if t.skipped else f'{t.seconds:.0f} s'}" for t in result.timings)
    console.print(
        f"stages: {stages} (total {result.seconds:.0f} s; {run.timings})\n"
        f"chosen mixture (data mixture and component weights): {run.best_mixture}\n"
        f"report: {result.report}\n"
        f"export its data mixture with: demix export {run.root} --to megatron|nemo|nanotron|olmo-core|hf-datasets|mosaic|json",
        soft_wrap=True, markup=False,  # paths and the command are for copying: never broken
    )


@app.command("run", rich_help_panel="1. The whole run")
def run_cmd(config: ConfigArg, overrides: OverridesOpt = None, device: DeviceOpt = "auto", quiet: QuietOpt = False) -> None:
    """Run the whole DeMix search on CONFIG: prepare -> train base -> train components -> search -> report.

    Stage by stage: split and tokenise the domains; pretrain the base on the general domain; train one component per domain from the base; then, in rounds, merge a proxy for each sampled set of component weights, evaluate it, fit predictors from component weights to scores and rank a large candidate pool; the chosen mixture is the mean of the top-k, recorded with the data mixture it stands for (what to train on). Finally writes report/report.html and report/report.md.

    Every stage reads and writes known files in the run directory (output_dir) and is skipped when already done, so running the same command again after an interruption resumes where it stopped. Logs go to <output_dir>/logs/demix.log, stage times to <output_dir>/timings.json.
    """
    cfg, run = open_run(config, overrides, quiet)
    _run_and_summarise(cfg, run, quiet, device, f"demix run {config}")


@app.command("demo", rich_help_panel="1. The whole run")
def demo_cmd(
    preset: Annotated[
        str, typer.Option(help="demo: tiny models, about 5-10 minutes on 2 CPU cores; full: more tokens and proxies, about an hour; smollm2: the real SmolLM2-135M as the base (make it first with `make smollm2`), about 35 minutes at 1 thread on 2 loaded CPU cores.")
    ] = "demo",
    overrides: OverridesOpt = None,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Run the whole DeMix search on the built-in offline example (no data, GPU or network needed).

    Four domains from embedded corpora (English prose, maths prose, generated maths problems, Python code), a tiny Llama base and one component per domain, then the merged-proxy search and the report. Writes runs/demo (or runs/full; change with -s output_dir=...). Run it again to resume after an interruption. `demix init` writes this config as a commented file to start your own.
    """
    from demix.configs import load_preset

    cfg = load_preset(preset, overrides or [])
    run = start_run(cfg, quiet)
    _run_and_summarise(cfg, run, quiet, device, f"demix demo --preset {preset}")

