"""`demix search`: evaluate merged proxies, fit predictors, rank a candidate pool, pick the mixture."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from demix.cli import app
from demix.cli._common import ConfigArg, OverridesOpt, QuietOpt, console, open_run, stage_header

if TYPE_CHECKING:
    from rich.table import Table

    from demix.search import BestMixture


@app.command("search", rich_help_panel="2. Stages, in pipeline order")
def search_cmd(
    config: ConfigArg,
    overrides: OverridesOpt = None,
    device: Annotated[str, typer.Option(help="Device for proxies and evaluation: auto, cpu, cuda, cuda:0, ...")] = "auto",
    quiet: QuietOpt = False,
    rescore: Annotated[
        bool, typer.Option("--rescore", help="Evaluate again the stored proxies that were scored under other evaluation or merge settings, and replace their scores.")
    ] = False,
) -> None:
    """Search the data mixture: merge a proxy for each sampled mixture, evaluate it, fit predictors, rank.

    Runs the rounds of search.rounds: round 0 samples mixtures around the token prior, later rounds the predicted top region. Every evaluation is committed to the run's store; running the command again on the same run directory resumes, and stored mixtures are never evaluated twice.

    Writes search/round_<r>/ (plan, predictors, CV report, pool, Pareto front) and best_mixture.json. Needs `demix prepare` and trained components first.
    """
    from demix.search import LiveSearchDisplay, search

    cfg, run = open_run(config, overrides, quiet)
    stage_header("search", "evaluate merged proxies, fit predictors, rank candidates", run.best_mixture)
    # Where proxies are evaluated is executor.kind's choice (docs/scaling.md): in this process,
    # or on Ray, where each worker builds its own resident proxy.
    with LiveSearchDisplay(cfg.data.domain_names, enabled=not quiet, console=console) as display:
        result = search(cfg, run, device=None if device == "auto" else device, on_event=display, rescore=rescore)

    console.quiet = False
    console.print(plan_table(result.best))
    console.print(
        f"{result.evaluations} evaluations in the store ({result.evaluated_now} new this run); wrote {result.path}\n"
        f"export it with: demix export {run.root} --to megatron|nemo|nanotron|olmo-core|hf-datasets|mosaic|json",
        soft_wrap=True, markup=False,  # paths and the command are for copying: never broken
    )


def plan_table(best: BestMixture) -> Table:
    """The chosen mixture as a training plan: token share, top-k spread, tokens and epochs per domain."""
    from rich.table import Table

    k, pool = (best.top_k.k, best.top_k.pool_size) if best.top_k else ("?", 0)
    spread = best.top_k.spread if best.top_k else {}
    table = Table(title=f"chosen mixture (mean of top {k} of {pool:,} candidates)")
    for col in ("domain", "token share", "top-k std", "tokens", "epochs"):
        table.add_column(col, justify="left" if col == "domain" else "right")
    for d, w in best.weights.items():
        tokens = (best.tokens or {}).get(d)
        epochs = (best.epochs or {}).get(d)
        std = spread.get(d, {}).get("std")
        table.add_row(
            d, f"{w:.4f}", f"{std:.4f}" if std is not None else "-",
            f"{tokens:,}" if tokens is not None else "-", f"{epochs:.2f}" if epochs is not None else "-",
        )
    return table
