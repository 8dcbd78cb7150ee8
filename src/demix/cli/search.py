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
    """Search the data mixture: merge a proxy for each sampled set of component weights, evaluate it, fit predictors, rank.

    Runs the rounds of search.rounds: round 0 samples component weights around the token prior, later rounds the predicted top region. Every evaluation is committed to the run's store; running the command again on the same run directory resumes, and stored proxies are never evaluated twice.

    Writes search/round_<r>/ (plan, predictors, CV report, pool, Pareto front) and best_mixture.json: the chosen component weights and the data mixture they stand for (what to train on; `demix export` writes it). Needs `demix prepare` and trained components first.
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
    for extra in (refinement_table(result.best), chosen_table(result.best)):
        if extra is not None:
            console.print(extra)
    console.print(
        f"{result.evaluations} evaluations in the store ({result.evaluated_now} new this run); wrote {result.path}\n"
        f"export its data mixture with: demix export {run.root} --to megatron|nemo|nanotron|olmo-core|hf-datasets|mosaic|json",
        soft_wrap=True, markup=False,  # paths and the command are for copying: never broken
    )


def plan_table(best: BestMixture) -> Table:
    """The chosen mixture as a training plan, per domain: its data mixture (token shares of the
    training data, what tokens and epochs are computed from), its component weights (the merge
    coefficients the search ranked) and their top-k spread; the caption says what the two are
    and the data mixtures the proxies stand for."""
    from rich.markup import escape
    from rich.table import Table

    from demix.report.tables import mixture_notes

    k, pool = (best.top_k.k, best.top_k.pool_size) if best.top_k else ("?", 0)
    spread = best.top_k.spread if best.top_k else {}
    data, weights = best.data_mixture or {}, best.component_weights or {}
    # demix < 0.2 computed tokens and epochs from the component weights, as if they were token shares.
    tokens, epochs = ({}, {}) if best.legacy else (best.tokens or {}, best.epochs or {})
    table = Table(
        title=f"chosen data mixture (mean of the top {k} of {pool:,} candidates)",
        caption=escape("\n".join(mixture_notes(best))),  # domain names are text, never markup
        caption_justify="left",
    )
    for col in ("domain", "data mixture", "component weight", "top-k std (component weight)", "tokens", "epochs"):
        table.add_column(col, justify="left" if col == "domain" else "right")
    for d in best.domains:
        std = spread.get(d, {}).get("std")
        table.add_row(
            d, _cell(data.get(d), ".4f"), _cell(weights.get(d), ".4f"), _cell(std, ".4f"),
            _cell(tokens.get(d), ","), _cell(epochs.get(d), ".2f"),
        )
    return table


def refinement_table(best: BestMixture) -> Table | None:
    """``search.refine``'s outcome (measured objective of the start and of the chosen mixture) and
    the sensitivity at the chosen mixture: per capability, the score's change per +0.01 of each
    domain's data share (``-`` where that move leaves the reachable data mixtures). None when
    the search did not refine."""
    from rich.markup import escape
    from rich.table import Table

    ref, sens = best.refinement, best.sensitivity
    if not ref or not sens:
        return None
    scores = sens.get("scores", {})
    table = Table(
        title=(f"refinement: measured objective {ref['start']['measured_objective']:.5f} -> "
               f"{ref['measured_objective']:.5f} ({ref['chosen']}; {len(ref['steps'])} proposal(s); {ref['stopped']})"),
        caption=escape("score change per +0.01 of the domain's data share (first order, exact gradients through "
                       "the merge); - : not reachable"),
        caption_justify="left",
    )
    table.add_column("score")
    for d in best.domains:
        table.add_column(f"+0.01 {d}", justify="right")
    for name, per in scores.items():
        table.add_row(escape(name), *[_cell(per.get(d), "+.5f") for d in best.domains])
    return table


def chosen_table(best: BestMixture) -> Table | None:
    """The chosen mixture's predicted scores with the ensemble's interval
    (``search.predictor_intervals``) and, where its proxy was evaluated (``search.measure_chosen``,
    or refinement), the measured score and whether it lies in the interval: per capability and
    for the objective. None when the file has neither."""
    from rich.markup import escape
    from rich.table import Table

    iv, m = best.intervals, best.measured
    if iv is None and m is None:
        return None
    predicted = {c: p.value for c, p in (best.predicted.capabilities if best.predicted else {}).items()}
    level = f"{iv.level:.0%} interval" if iv else "interval"
    table = Table(
        title="the chosen mixture: predicted, " + (f"ensemble {level}" if iv else "no ensemble")
        + (f", measured ({m.source})" if m else ", not measured (search.measure_chosen: true measures it)"),
        caption=escape("a measured score far from the prediction means the predictors overfit the proxies"),
        caption_justify="left",
    )
    for col in ("score", "predicted", level, "measured", "inside"):
        table.add_column(col, justify="left" if col == "score" else "right")
    names = list(dict.fromkeys([*predicted, *(iv.capabilities if iv else {}), *(m.capabilities if m else {})]))
    rows = [(c, predicted.get(c), iv.capabilities.get(c) if iv else None, m.capabilities.get(c) if m else None)
            for c in names]
    kind = (iv.objective_kind if iv else m.objective_kind if m else "objective")
    rows.append((f"objective ({kind})", m.predicted_objective if m else None, iv.objective if iv else None,
                 m.objective if m else None))
    inside = (m.inside_interval or {}) if m else {}
    for name, pred, interval, measured in rows:
        key = "objective" if name.startswith("objective (") else name
        span = f"[{interval.lower:.4f}, {interval.upper:.4f}]" if interval else "-"
        flag = {True: "yes", False: "no"}.get(inside[key], "-") if key in inside else "-"
        table.add_row(escape(name), _cell(pred, ".4f"), span, _cell(measured, ".4f"), flag)
    return table


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)
