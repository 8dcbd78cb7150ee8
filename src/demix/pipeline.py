"""`demix run`: every stage of a DeMix search in order, each skipped when its outputs are complete.

Stages and the files that say they are done (names from :mod:`demix.rundir`):

==================  =====================================================================
prepare             ``data/provenance.json`` with this data + tokenizer fingerprint
train base          ``models/base/demix.json`` (a given ``model.base_path`` is checked each time)
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
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from demix.checkpoints import base_dir, components_to_train, is_finished
from demix.config import RunConfig
from demix.rundir import RunDir, StageTiming, TimingsLog

if TYPE_CHECKING:
    from demix.search import BestMixture

log = logging.getLogger("demix.pipeline")

STAGES = ("prepare", "train base", "train components", "search", "report")


@dataclass
class PipelineResult:
    """What ``run_pipeline`` did and where the results are."""

    run: RunDir
    best: BestMixture
    """The chosen mixture (``best_mixture.json``)."""
    timings: list[StageTiming]
    report: Path | None
    """``report/report.html`` (None when the report stage was turned off)."""

    @property
    def seconds(self) -> float:
        return sum(t.seconds for t in self.timings)


# --------------------------------------------------------------------------- is a stage done?


def report_is_current(run: RunDir) -> bool:
    """True when the report exists and is newer than the chosen mixture (and any fidelity result)."""
    html = run.report_html
    if not html.is_file() or not run.best_mixture.is_file():
        return False
    newest = run.best_mixture.stat().st_mtime
    if run.fidelity.is_dir():
        newest = max([newest, *(p.stat().st_mtime for p in run.fidelity.glob("*.json"))])
    return html.stat().st_mtime >= newest


# --------------------------------------------------------------------------- the pipeline


class _StageRunner:
    """Prints a header per stage, runs it unless it is done, and records its time."""

    def __init__(self, run: RunDir, command: str, console: Any, total: int) -> None:
        self.console = console
        self.total = total
        self.timings = TimingsLog(run, command)
        self.done: list[StageTiming] = []

    def __call__(
        self, index: int, name: str, what: str, where: Path, is_done: bool, work: Callable[[], dict[str, Any] | None]
    ) -> None:
        self.console.rule(f"[bold][{index}/{self.total}] {name}")
        self.console.print(f"{what}\n[dim]writes: {where}[/]")
        if is_done:
            self.console.print("[green]already done[/] [dim](skipped)[/]")
            log.info("stage %s: already done, skipped", name)
            timing = StageTiming(name, 0.0, True)
        else:
            log.info("stage %s: %s -> %s", name, what, where)
            t0 = time.perf_counter()
            detail = work() or {}
            timing = StageTiming(name, round(time.perf_counter() - t0, 2), False, detail)
            self.console.print(f"[dim]{name}: {timing.seconds:.1f} s[/]")
            log.info("stage %s finished in %.1f s", name, timing.seconds)
        self.timings.add(timing)
        self.done.append(timing)


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
    ``quiet``); ``device`` overrides ``evaluation.device`` (``executor.device`` on Ray) for proxies
    and evaluation. Components are trained by ``train.backend``; proxies are evaluated where
    ``executor.kind`` says, through the same :func:`demix.search.search` as ``demix search``."""
    from rich.console import Console

    from demix.config import save_config

    console = console or Console(quiet=quiet)
    run.root.mkdir(parents=True, exist_ok=True)
    save_config(config, run.config)  # the report and later verbs read the resolved config from here
    stage = _StageRunner(run, command, console, len(STAGES))
    show = not quiet
    _prepare_stage(stage, config, run, show)
    _train_stages(stage, config, run, show)
    _search_stage(stage, config, run, show, device)
    html: Path | None = None
    if report:
        _report_stage(stage, config, run)
        html = run.report_html
    stage.timings.finish()
    from demix.search import BestMixture

    return PipelineResult(run, BestMixture.read(run.best_mixture), stage.done, html)


def _prepare_stage(stage: _StageRunner, config: RunConfig, run: RunDir, show: bool) -> None:
    from demix.prepare import is_prepared, prepare

    def work() -> dict[str, Any]:
        result = prepare(config, run, progress=show)
        return {"tokens": {d: v["splits"]["train"]["tokens"] for d, v in result["domains"].items()}}

    stage(1, "prepare", "split each domain's documents, train the tokenizer, pack tokens", run.data,
          is_prepared(config, run), work)


def _train_stages(stage: _StageRunner, config: RunConfig, run: RunDir, show: bool) -> None:
    from demix.training import train_base, train_components

    def base() -> dict[str, Any]:
        result = train_base(config, run, show_progress=show)
        return {"tokens": result.provenance.tokens_seen if result.provenance else None}

    # A given base is never "done" ahead of time: the stage checks it against the run's
    # tokenizer (headers and config only), which is what it really does with it.
    given_base = bool(config.model.base_path)
    stage(2, "train base", base_stage_description(config), base_dir(config, run),
          not given_base and is_finished(run.base), base)

    todo = components_to_train(config)

    def components() -> dict[str, Any]:
        results = train_components(config, run, todo, show_progress=show)
        return {"trained": [d for d, r in results.items() if not r.skipped], "backend": config.train.backend}

    stage(3, "train components", components_stage_description(config), run.models / "components",
          all(is_finished(run.component(d)) for d in todo), components)


def describe_checkpoint(path: str | Path) -> str:
    """``'PATH' (a llama model, 134.5M parameters, bf16)`` from its config.json and safetensors
    headers (no weights are read); just ``'PATH'`` when those cannot be read (the stage that
    uses it then says why)."""
    from demix.checkpoints import Layout
    from demix.errors import DemixError

    try:
        layout = Layout.read(path, "checkpoint")
    except DemixError:
        return f"'{path}'"
    n = sum(math.prod(t.shape) for t in layout.tensors.values())
    dtypes = sorted({t.dtype for t in layout.tensors.values()})
    kind = layout.config.get("model_type") or "transformers"
    size = f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,}"
    return f"'{path}' (a {kind} model, {size} parameters, {'/'.join(d.lower() for d in dtypes)})"


def base_stage_description(config: RunConfig) -> str:
    """What the base stage does with this config: pretrain a fresh base, or use the given
    ``model.base_path`` as it is (checked against the run's tokenizer, not trained)."""
    m = config.model
    if m.base_path:
        return (
            f"use the given base checkpoint {describe_checkpoint(m.base_path)} (model.base_path) as it is: "
            "checked against the run's tokenizer, not trained"
        )
    return (
        f"pretrain a {m.architecture} base ({m.hidden_size} wide, {m.num_layers} layers) "
        f"on '{config.data.general_domain}' for {config.train.base.tokens:,} tokens"
    )


def components_stage_description(config: RunConfig) -> str:
    """What the components stage does: which domains it trains from which base, with which
    trainer, and which components it takes as given (``train.components.paths``)."""
    todo = components_to_train(config)
    given = [d for d in config.data.domain_names if d in config.train.components.paths]
    parts = []
    if todo:
        share = config.train.components.general_share
        trainer = "your trainer (train.command.template)" if config.train.backend == "command" else "the HF recipe"
        start = f"the given base '{config.model.base_path}'" if config.model.base_path else "the base"
        parts.append(
            f"continue {start} on each of {len(todo)} domain(s) {todo} ({share:.0%} general data) for "
            f"{config.train.components.tokens:,} tokens each, with {trainer}"
        )
    if given:
        parts.append(f"use the given component(s) of {given} (train.components.paths) as they are, not trained")
    return "; ".join(parts)


def _search_stage(stage: _StageRunner, config: RunConfig, run: RunDir, show: bool, device: str | None) -> None:
    from demix.search import LiveSearchDisplay, search, search_is_complete

    def work() -> dict[str, Any]:
        with LiveSearchDisplay(config.data.domain_names, enabled=show) as display:
            result = search(config, run, device=device, on_event=display)
        return {"evaluations": result.evaluations, "evaluated_now": result.evaluated_now,
                "executor": config.executor.kind, "proxy_setup_seconds": result.setup_seconds}

    s = config.search
    where = "" if config.executor.kind == "local" else f" on {config.executor.kind}"
    stage(
        4, "search",
        f"merge and evaluate {sum(s.rounds)} proxies{where} in {len(s.rounds)} rounds {list(s.rounds)}, fit "
        f"predictors, rank {s.pool_size:,} candidates, average the top {s.top_k:,}",
        run.best_mixture, search_is_complete(config, run), work,
    )


def _report_stage(stage: _StageRunner, config: RunConfig, run: RunDir) -> None:
    def work() -> dict[str, Any]:
        from demix.report import write_report

        return {"figures": len(write_report(run, config).figures)}

    stage(5, "report", "figures and tables of the search: report.html (self-contained) and report.md",
          run.report, report_is_current(run), work)
