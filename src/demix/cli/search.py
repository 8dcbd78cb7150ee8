"""`demix search`: evaluate merged proxies, fit predictors, rank a candidate pool, pick the mixture."""

from __future__ import annotations

from typing import Annotated

import typer

from demix.cli import app
from demix.cli._common import ConfigArg, OverridesOpt, QuietOpt, console, open_run, stage_header


@app.command("search", rich_help_panel="2. Stages, in pipeline order")
def search_cmd(
    config: ConfigArg,
    overrides: OverridesOpt = None,
    device: Annotated[str, typer.Option(help="Device for proxies and evaluation: auto, cpu, cuda, cuda:0, ...")] = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Search the data mixture: merge a proxy for each sampled mixture, evaluate it, fit predictors, rank.

    Runs the rounds of search.rounds: round 0 samples mixtures around the token prior, later rounds the predicted top region. Every evaluation is committed to the run's store; running the command again on the same run directory resumes, and stored mixtures are never evaluated twice.

    Writes search/round_<r>/ (plan, predictors, CV report, pool, Pareto front) and best_mixture.json. Needs `demix prepare` and trained components first.
    """
    from demix.pipeline import merged_proxy_scorer
    from demix.search import read_token_counts, run_search

    cfg, run = open_run(config, overrides, quiet)
    stage_header("search", "evaluate merged proxies, fit predictors, rank candidates", run.best_mixture)
    token_counts = read_token_counts(run, cfg.data.domain_names)
    if cfg.executor.kind == "local":
        scorer = merged_proxy_scorer(cfg, run, device if device != "auto" else cfg.evaluation.device)
        result = run_search(cfg, run, scorer, token_counts, progress=not quiet)
    else:  # e.g. Ray: each worker builds its own resident proxy (docs/scaling.md)
        from demix.executors import make_executor

        with make_executor(cfg, run, device=None if device == "auto" else device) as executor:
            result = run_search(cfg, run, None, token_counts, progress=not quiet, executor=executor)

    from rich.table import Table

    console.quiet = False
    best = result.best
    table = Table(title=f"chosen mixture (mean of top {best['top_k']['k']} of {best['top_k']['pool_size']:,} candidates)")
    for col in ("domain", "token share", "top-k std", "tokens", "epochs"):
        table.add_column(col, justify="left" if col == "domain" else "right")
    for d, w in best["weights"].items():
        tokens = best.get("tokens", {}).get(d)
        epochs = best.get("epochs", {}).get(d)
        table.add_row(
            d, f"{w:.4f}", f"{best['top_k']['spread'][d]['std']:.4f}",
            f"{tokens:,}" if tokens is not None else "-", f"{epochs:.2f}" if epochs is not None else "-",
        )
    console.print(table)
    console.print(
        f"{result.evaluations} evaluations in the store ({result.evaluated_now} new this run); wrote {result.path}\n"
        f"export it with: demix export {run.root} --to megatron|nemo|nanotron|olmo-core|hf-datasets|mosaic|json"
    )
