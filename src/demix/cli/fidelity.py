"""`demix fidelity`: do merged proxies rank mixtures like models really trained on them?"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated

import typer

from demix.cli import app
from demix.cli._common import ConfigArg, OverridesOpt, QuietOpt, console, open_run, stage_header
from demix.proxy_kind import MERGED

if TYPE_CHECKING:
    from demix.config import RunConfig
    from demix.fidelity.stage import FidelityResult


#: fidelity.pairing -> what the reference models were trained on, in words.
_PAIRED = {
    "data_mixture": "the data mixture each merged proxy stands for",
    "component_weights": "the component weights taken as data (pairing component_weights)",
}


def _cell(st) -> str:
    """A statistic as `value [low, high]`, or `-` with nothing invented when undefined."""
    if not st.defined:
        return "[dim]-[/]"
    if math.isnan(st.ci_low):
        return f"{st.value:+.2f}"
    return f"{st.value:+.2f} [dim][{st.ci_low:+.2f}, {st.ci_high:+.2f}][/]"


@app.command("fidelity", rich_help_panel="3. Checks and tools")
def fidelity_cmd(
    config: ConfigArg,
    overrides: OverridesOpt = None,
    device: Annotated[str, typer.Option(help="Device for merged proxies and evaluation: auto, cpu, cuda, cuda:0, ... (training uses train.device).")] = "auto",
    quiet: QuietOpt = False,
    calibrate: Annotated[bool, typer.Option("--calibrate", help="Instead: the merge-vs-data-mix check (DeMix Appendix D): two components merged at fidelity.calibrate.ratios vs models trained on the same data mixture, at each budget of fidelity.calibrate.budgets; writes fidelity/calibrate.json.")] = False,
) -> None:
    """Check the search's proxies against reference models really trained on a few mixtures.

    For fidelity.num_references component weights (sampled like the search's, plus
    fidelity.mixtures) it builds the merged proxy, trains a reference model with the components'
    recipe (the ground truth) on the data mixture the proxy stands for (fidelity.pairing:
    data_mixture; component_weights trains it on the component weights taken as data, the
    pairing before 0.2) and a trained proxy on the same data at each budget of
    fidelity.trained_proxy_budgets (the RegMix-style baseline); evaluates all of them on the
    run's benchmarks; and reports, per capability
    and macro-averaged, how well each kind of proxy ranks the mixtures like the reference
    models: Spearman rho, Kendall tau, Spearman on the top 25% and the Capability Recovery Rate,
    each with its n and a bootstrap interval. Also: the compute of one search per approach and
    the merge-validity audit (delta sizes, conflicts, proxy-vs-reference gaps).

    Every model and score is stored in the run and reused: running it again trains nothing.
    Writes fidelity/ (fidelity.json, scores.json, compute.json, audit.json, one report per
    proxy kind). Needs `demix prepare`, `demix train base` and `demix train components` first.
    """
    from demix.fidelity.stage import run_fidelity

    cfg, run = open_run(config, overrides, quiet)
    if calibrate:
        _calibrate(cfg, run, device, quiet)
        return
    stage_header("fidelity", "reference models vs merged and trained proxies of the same mixtures", run.fidelity)

    counter = {"trained": 0, "evaluated": 0, "reused": 0}

    def on_event(kind: str, key: str, action: str) -> None:
        counter[action] += 1
        console.print(f"  {kind:<18} {key}  {action}")

    result = run_fidelity(
        cfg, run, progress=not quiet, device=None if device == "auto" else device, on_event=on_event
    )

    console.quiet = False
    _print_fidelity(result, cfg)
    _print_compute(result)
    _print_audit(result)
    console.print(
        f"{counter['trained']} model(s) trained, {counter['evaluated']} evaluated, {counter['reused']} reused from the store; "
        f"wrote {result.directory}"
    )


def _calibrate(cfg: RunConfig, run, device: str, quiet: bool) -> None:
    """`demix fidelity --calibrate`: train what is missing, print one row per budget and capability."""
    from rich.table import Table

    from demix.fidelity.calibrate import calibration_file, run_calibration

    stage_header("fidelity --calibrate", "merged proxies of two components vs models trained on the same data mixture",
                 calibration_file(run))

    def on_step(what: str, budget: int, action: str) -> None:
        console.print(f"  {what:<24} {f'@{budget}' if budget else '':<10} {action}")

    result = run_calibration(cfg, run, device=None if device == "auto" else device, progress=not quiet, on_step=on_step)
    console.quiet = False
    table = Table(
        title=f"merge vs data mix: {result.domains[0]} and {result.domains[1]} merged at ratios "
        f"{', '.join(f'{r:g}' for r in result.ratios)}",
        caption="consistency: merged / data-mixed score (mean over ratios; 2**-bits-per-byte for held-out loss); "
        "gain ratio: (merged - base) / (data-mixed - base); rank rho: merged vs data-mixed over the ratios; "
        "rel. delta: ||component - base|| / ||base||, mean of the two.",
    )
    for col in ("budget", "capability", "rel. delta", "consistency", "gain ratio", "rank rho"):
        table.add_column(col, justify="left" if col == "capability" else "right")

    def num(x: float) -> str:
        return "-" if not math.isfinite(x) else f"{x:.3f}"

    for r in result.rows:
        table.add_row(f"{r.budget:,}", r.capability, f"{r.relative_delta:.3f}", num(r.consistency_ratio),
                      num(r.gain_ratio), num(r.rank_rho))
    console.print(table)
    console.print(f"wrote {calibration_file(run)}")


def _print_fidelity(result: FidelityResult, cfg: RunConfig) -> None:
    """One row per capability and a macro row per proxy kind and baseline; then whether the
    benchmarks tell proxies apart at all (the no-model baseline)."""
    from rich.table import Table

    from demix.fidelity.targets import LINEAR_RULE, OWN_WEIGHT

    first = next(iter(result.reports.values()))
    f = cfg.fidelity
    table = Table(
        title=f"fidelity against {len(result.mixtures)} reference models trained on "
        f"{_PAIRED[result.pairing]} ({f.confidence:.0%} bootstrap CI, {f.bootstrap} resamples)",
        caption="rho: Spearman; tau: Kendall tau-b; top rho: Spearman on the best "
        f"{f.top_fraction:.0%} by reference score (n = {first.macro['top_spearman'].n}); "
        "CRR: sum(proxy) / sum(reference) on 2**-bits-per-byte scores. '-': undefined (see fidelity.json for why). "
        "own weight: no model, each domain's held-out score ranked by that domain's share of the reference's "
        "data mixture; linear rule: no model, the best single linear rule of the data-mixture weights fitted on "
        "the other reference models (leave-one-out). Macro own / transfer: over a training domain's held-out "
        "loss / over every other target.",
    )
    for col in ("proxies", "target", "n", "rho", "tau", "top rho", "CRR"):
        table.add_column(col, justify="left" if col in ("proxies", "target") else "right")
    shown = {**result.reports, **{k.replace("_", " "): b for k, b in result.baselines.items()}}
    for kind, rep in shown.items():
        rows = [(name, t.spearman, t.kendall, t.top_spearman, t.crr) for name, t in rep.targets.items() if t.capability]
        m = rep.macro
        rows.append(("[bold]macro[/]", m["spearman"], m["kendall"], m["top_spearman"], m["crr"]))
        if len(result.groups) > 1:
            for group, gm in rep.group_macro.items():
                rows.append((f"[bold]macro {group}[/]", gm["spearman"], gm["kendall"], gm["top_spearman"], gm["crr"]))
        for i, (name, rho, tau, top, crr) in enumerate(rows):
            table.add_row(kind if i == 0 else "", name, str(rho.n), _cell(rho), _cell(tau), _cell(top), _cell(crr))
        table.add_section()
    console.print(table)
    own = result.baselines.get(OWN_WEIGHT)
    if own is not None and own.macro["spearman"].defined and MERGED in result.reports:
        base_rho, merged_rho = own.macro["spearman"].value, result.reports[MERGED].macro["spearman"].value
        verdict = ("these benchmarks barely tell proxies apart: compare proxies on benchmarks the weights do not "
                   "predict (e.g. lm-eval tasks)" if base_rho >= merged_rho - 0.05 else "the proxies add information")
        console.print(f"no-model baseline: ranking each domain's held-out score by that domain's data share gives macro rho "
                      f"{base_rho:.2f} (merged proxies {merged_rho:.2f}); {verdict}")
    rule = result.baselines.get(LINEAR_RULE)
    if rule is not None and MERGED in result.reports:
        for group, diff in result.group_differences.get(LINEAR_RULE, {}).items():
            ahead = ("ahead" if diff.defined and not math.isnan(diff.ci_low) and diff.ci_low > 0 else
                     "behind" if diff.defined and not math.isnan(diff.ci_high) and diff.ci_high < 0 else "not ahead")
            console.print(f"linear-rule baseline ({group} targets): macro rho {rule.group_macro[group]['spearman'].value:.2f}; "
                          f"merged minus it {_cell(diff)}: merged proxies are {ahead}")


def _print_compute(result: FidelityResult) -> None:
    """What one search costs per approach, next to what its proxies are worth."""
    from rich.table import Table

    from demix.fidelity.compute import approach_of

    comp = Table(
        title=f"compute of one search of {result.compute['search_proxies']} proxies (6 N D to train, 2 N D to evaluate)",
        caption="merged-this: macro rho of the merged proxies minus this approach's, with a paired bootstrap CI "
        "(same resampled mixtures); merged proxies are ahead where the whole interval is above 0.",
    )
    groups = [g for g in result.groups if len(result.groups) > 1]
    for col in ("approach", "train tokens", "eval tokens", "FLOPs", "vs DeMix", "macro rho", "merged-this",
                *(f"merged-this ({g})" for g in groups)):
        comp.add_column(col, justify="left" if col == "approach" else "right")
    rho = {approach_of(k): r.macro["spearman"] for k, r in result.reports.items()}
    for row in result.compute["rows"]:
        ratio = row.get("flops_vs_demix")
        st = rho.get(row["approach"])
        diff = result.differences.get(row["approach"])
        comp.add_row(
            row["approach"], f"{row['train_tokens']:,}", f"{row['eval_tokens']:,}", f"{row['flops']:.3g}",
            f"{ratio:.2f}x" if ratio is not None else "-", _cell(st) if st is not None else "-",
            _cell(diff) if diff is not None else "",
            *(_cell(result.group_differences[row["approach"]][g])
              if g in result.group_differences.get(row["approach"], {}) else "" for g in groups),
        )
    refs = result.compute["references"]
    comp.add_row("[dim]reference models (ground truth)[/]", f"{refs['train_tokens']:,}", f"{refs['eval_tokens']:,}",
                 f"{refs['flops']:.3g}", "", "", *("" for _ in groups))
    console.print(comp)


def _print_audit(result: FidelityResult) -> None:
    warnings = result.audit.warnings()
    if warnings:
        console.print(f"[bold yellow]merge audit: {len(warnings)} warning(s)[/]")
        for w in warnings:
            colour = "red" if w.severity == "critical" else "yellow"
            console.print(f"  [{colour}]{w.severity}[/]: {w.message}")
    else:
        console.print("merge audit: no warnings (delta sizes, delta cosines and proxy gaps within the thresholds)")
    for note in result.notes:
        console.print(f"[dim]note: {note}[/]")
