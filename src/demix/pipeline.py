"""`demix run`: every stage of a DeMix search in order, each skipped when its outputs are complete.

Stages and the files that say they are done (names from :mod:`demix.rundir`):

==================  =====================================================================
prepare             ``data/provenance.json`` with this data + tokenizer fingerprint
train base          ``models/base/demix.json`` (or ``model.base_path`` is given)
train components    ``models/components/<domain>/demix.json`` for every trained domain
search              ``best_mixture.json`` planned with this config's rounds, pool and top-k
report              ``report/report.html`` newer than ``best_mixture.json``
==================  =====================================================================

Resuming after a kill relies on each stage's own bookkeeping: prepare writes its provenance
last; training resumes from the Trainer's last complete checkpoint and writes ``demix.json``
last; the search commits each proxy evaluation to the store before the next one and replans a
round from its ``planned.json``. So the pipeline itself only has to decide which stage to enter.

Each invocation appends one entry to ``<run>/timings.json`` (rewritten atomically after every
stage, so a killed run keeps the times of the stages it finished).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from demix.config import RunConfig
from demix.errors import DemixError
from demix.rundir import RunDir, read_json, write_json

log = logging.getLogger("demix.pipeline")

STAGES = ("prepare", "train base", "train components", "search", "report")


@dataclass
class StageTiming:
    """Wall time of one stage in one invocation."""

    stage: str
    seconds: float
    skipped: bool
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class PipelineResult:
    """What ``run_pipeline`` did and where the results are."""

    run: RunDir
    best: dict[str, Any]
    """The content of ``best_mixture.json``."""
    timings: list[StageTiming]
    report: Path | None
    """``report/report.html`` (None when the report stage was turned off)."""

    @property
    def seconds(self) -> float:
        return sum(t.seconds for t in self.timings)


# --------------------------------------------------------------------------- the scorer


def merged_proxy_scorer(config: RunConfig, run: RunDir, device: str | None = None) -> Callable[[dict[str, float]], Any]:
    """The search's scorer: write the merged proxy of a mixture into one resident model and
    evaluate it. The proxy builder (base + components, loaded once) and the evaluator (held-out
    windows tokenised once) are built on the first call, so a resumed search whose evaluations
    are all in the store never loads a model. ``scorer.setup_seconds`` records that one-off cost."""
    state: dict[str, Any] = {}

    def setup() -> None:
        try:
            from demix.evaluation import Evaluator
            from demix.merging import ProxyBuilder
        except ImportError as exc:
            raise DemixError(
                f"the proxy builder or evaluator cannot be imported ({exc})", "reinstall demix: pip install -e '.[eval]'"
            ) from None
        from transformers.utils import logging as hf_logging

        t0 = time.perf_counter()
        dev = device if device not in (None, "auto") else config.evaluation.device
        # transformers' "Loading weights" bar would break the search's own progress display.
        was_enabled = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            state["builder"] = ProxyBuilder.from_run(config, run, dev)
            state["evaluator"] = Evaluator.from_run(config, run, dev)
        finally:
            if was_enabled:
                hf_logging.enable_progress_bar()
        scorer.setup_seconds = time.perf_counter() - t0
        log.info("proxy builder and evaluator ready in %.1f s", scorer.setup_seconds)

    def scorer(mixture: dict[str, float]) -> Any:
        if not state:
            setup()
        state["builder"].build(mixture)
        return state["evaluator"].evaluate(state["builder"].model)

    scorer.setup_seconds = 0.0
    return scorer


# --------------------------------------------------------------------------- is a stage done?


def components_to_train(config: RunConfig) -> list[str]:
    """Domains whose component this run trains (the others come from train.components.paths)."""
    return [d for d in config.data.domain_names if d not in config.train.components.paths]


def search_is_complete(config: RunConfig, run: RunDir) -> bool:
    """True when ``best_mixture.json`` exists and was produced by this config's search plan
    (same domains, rounds, pool size, top-k and objective) on the current base and components
    (same checkpoint fingerprint; files written before the fingerprint was recorded pass)."""
    if not run.best_mixture.is_file():
        return False
    from demix.search import component_fingerprint

    try:
        best = read_json(run.best_mixture)
        s = config.search
        return (
            list(best["weights"]) == config.data.domain_names
            and [r["planned"] for r in best["rounds"]] == list(s.rounds)
            and best["top_k"]["pool_size"] == s.pool_size
            and best["top_k"]["k"] <= s.top_k
            and best["objective"]["kind"] == s.objective
            and best["objective"]["constraints"] == list(s.constraints)
            and best["objective"]["capability_weights"] == dict(s.capability_weights)
            and best.get("components") in (None, component_fingerprint(config, run))
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def report_is_current(run: RunDir) -> bool:
    """True when the report exists and is newer than the chosen mixture (and any fidelity result)."""
    html = run.report / "report.html"
    if not html.is_file() or not run.best_mixture.is_file():
        return False
    newest = run.best_mixture.stat().st_mtime
    if run.fidelity.is_dir():
        newest = max([newest, *(p.stat().st_mtime for p in run.fidelity.glob("*.json"))])
    return html.stat().st_mtime >= newest


# --------------------------------------------------------------------------- timings


TIMINGS_FILE = "timings.json"


class _Timings:
    """One entry of ``<run>/timings.json`` per invocation, rewritten after every stage."""

    def __init__(self, run: RunDir, command: str) -> None:
        self.path = run.root / TIMINGS_FILE
        for stale in run.root.glob(f".{TIMINGS_FILE}.*.tmp"):  # left by a SIGKILL during a write
            stale.unlink(missing_ok=True)
        try:
            self.entries = read_json(self.path) if self.path.is_file() else []
            if not isinstance(self.entries, list):
                self.entries = []
        except (OSError, ValueError):
            self.entries = []
        self.entry: dict[str, Any] = {
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": command,
            "finished": False,
            "total_seconds": 0.0,
            "stages": [],
        }
        self.entries.append(self.entry)

    def add(self, timing: StageTiming) -> None:
        self.entry["stages"].append(asdict(timing))
        self.entry["total_seconds"] = round(sum(s["seconds"] for s in self.entry["stages"]), 2)
        write_json(self.path, self.entries)

    def finish(self) -> None:
        self.entry["finished"] = True
        write_json(self.path, self.entries)


def read_timings(run: RunDir) -> list[dict[str, Any]]:
    """Every invocation recorded in ``<run>/timings.json`` (oldest first; empty when none)."""
    path = run.root / TIMINGS_FILE
    if not path.is_file():
        return []
    data = read_json(path)
    return data if isinstance(data, list) else []


# --------------------------------------------------------------------------- the pipeline


def run_pipeline(
    config: RunConfig,
    run: RunDir,
    quiet: bool = False,
    *,
    console: Any = None,
    device: str | None = None,
    report: bool = True,
    command: str = "demix run",
) -> PipelineResult:
    """Run (or resume) every stage on ``run``: prepare, train base, train components, search
    (merge proxies, evaluate, predict, rank, in rounds), report. Stages whose outputs are complete
    are skipped. ``console`` is a rich Console for headers (default: a new one, silent when
    ``quiet``); ``device`` overrides ``evaluation.device`` for proxies and evaluation."""
    from rich.console import Console

    from demix.config import save_config

    console = console or Console(quiet=quiet)
    run.root.mkdir(parents=True, exist_ok=True)
    save_config(config, run.config)  # the report and later verbs read the resolved config from here
    timings = _Timings(run, command)
    done: list[StageTiming] = []
    show = not quiet

    def stage(index: int, name: str, what: str, where: Path, is_done: bool, work: Callable[[], dict[str, Any] | None]) -> None:
        console.rule(f"[bold][{index}/{len(STAGES)}] {name}")
        console.print(f"{what}\n[dim]writes: {where}[/]")
        if is_done:
            console.print("[green]already done[/] [dim](skipped)[/]")
            log.info("stage %s: already done, skipped", name)
            timing = StageTiming(name, 0.0, True)
        else:
            log.info("stage %s: %s -> %s", name, what, where)
            t0 = time.perf_counter()
            detail = work() or {}
            timing = StageTiming(name, round(time.perf_counter() - t0, 2), False, detail)
            console.print(f"[dim]{name}: {timing.seconds:.1f} s[/]")
            log.info("stage %s finished in %.1f s", name, timing.seconds)
        timings.add(timing)
        done.append(timing)

    # 1. prepare
    from demix.prepare import is_prepared, prepare

    def do_prepare() -> dict[str, Any]:
        result = prepare(config, run, progress=show)
        return {"tokens": {d: v["splits"]["train"]["tokens"] for d, v in result["domains"].items()}}

    stage(
        1, "prepare", "split each domain's documents, train the tokenizer, pack tokens",
        run.data, is_prepared(config, run), do_prepare,
    )

    # 2. train base
    from demix.training import base_dir, is_finished, train_base, train_components

    def do_base() -> dict[str, Any]:
        result = train_base(config, run, show_progress=show)
        return {"tokens": result.provenance.get("tokens_seen")}

    base_done = bool(config.model.base_path) or is_finished(run.base)
    stage(
        2, "train base",
        f"pretrain a {config.model.architecture} base ({config.model.hidden_size} wide, {config.model.num_layers} layers) "
        f"on '{config.data.general_domain}' for {config.train.base.tokens:,} tokens",
        base_dir(config, run), base_done, do_base,
    )

    # 3. train components
    todo = components_to_train(config)

    def do_components() -> dict[str, Any]:
        results = train_components(config, run, todo, show_progress=show)
        return {"trained": [d for d, r in results.items() if not r.skipped]}

    share = config.train.components.general_share
    stage(
        3, "train components",
        f"continue the base on each of {len(todo)} domains ({share:.0%} general data) for "
        f"{config.train.components.tokens:,} tokens each",
        run.models / "components", all(is_finished(run.component(d)) for d in todo), do_components,
    )

    # 4. search
    def do_search() -> dict[str, Any]:
        from demix.search import read_token_counts, run_search

        scorer = merged_proxy_scorer(config, run, device)
        token_counts = read_token_counts(run, config.data.domain_names)
        result = run_search(config, run, scorer, token_counts, progress=show)
        return {"evaluations": result.evaluations, "evaluated_now": result.evaluated_now,
                "proxy_setup_seconds": round(scorer.setup_seconds, 2)}

    s = config.search
    stage(
        4, "search",
        f"merge and evaluate {sum(s.rounds)} proxies in {len(s.rounds)} rounds {list(s.rounds)}, fit predictors, "
        f"rank {s.pool_size:,} candidates, average the top {s.top_k:,}",
        run.best_mixture, search_is_complete(config, run), do_search,
    )

    # 5. report
    html: Path | None = None
    if report:
        def do_report() -> dict[str, Any]:
            from demix.report import write_report

            written = write_report(run, config)
            return {"figures": len(written.figures)}

        stage(
            5, "report", "figures and tables of the search: report.html (self-contained) and report.md",
            run.report, report_is_current(run), do_report,
        )
        html = run.report / "report.html"
    timings.finish()
    return PipelineResult(run, read_json(run.best_mixture), done, html)


# --------------------------------------------------------------------------- the summary


def summary_table(best: dict[str, Any]) -> Any:
    """A rich Table: the chosen mixture vs the natural and uniform mixtures, weights per domain
    and predicted score per capability, with each predictor's cross-validated error."""
    from rich.table import Table

    baselines = best.get("baselines", {})
    names = ["chosen"] + [n for n in ("natural", "uniform") if n in baselines]
    cols = {"chosen": {"weights": best["weights"], "predicted": best["predicted"]}, **baselines}
    k = best.get("top_k", {})
    table = Table(
        title=f"chosen mixture: mean of the top {k.get('k', '?'):,} of {k.get('pool_size', 0):,} candidates",
        caption=(
            f"natural = token-proportional; predicted scores are higher-is-better; CV = {best.get('predictor', {}).get('cv_folds', '?')}-fold "
            f"cross-validation of the {best.get('predictor', {}).get('kind', '?')} predictor on "
            f"{best.get('predictor', {}).get('n', '?')} evaluated proxies"
        ),
    )
    table.add_column("", no_wrap=True)
    for n in names:
        table.add_column(n, justify="right")
    table.add_column("CV RMSE", justify="right")
    table.add_column("CV Spearman (n)", justify="right")
    for d in best["weights"]:
        table.add_row(f"weight {d}", *[f"{cols[n]['weights'][d]:.3f}" for n in names], "", "")
    table.add_section()
    for c, p in best["predicted"]["capabilities"].items():
        rho = p.get("cv_spearman")
        table.add_row(
            f"predicted {c}",
            *[f"{cols[n]['predicted']['capabilities'][c]['value']:.4f}" for n in names],
            f"{p['cv_rmse']:.4f}" if p.get("cv_rmse") is not None else "-",
            (f"{rho:.2f}" if rho is not None else "undefined") + f" ({p.get('cv_n', '?')})",
        )
    return table
