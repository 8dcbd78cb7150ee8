"""The evaluator the search calls: all of a run's benchmarks, prepared once, scored per model.

    evaluator = Evaluator.from_run(config, run, device)   # held-out tokens, tokenizer, lm-eval tasks
    result = evaluator.evaluate(model)                    # -> EvalResult, keyed by name

``model`` is typically a resident proxy whose weights change in place between calls: nothing
computed from a model's outputs is kept from one call to the next.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from demix.checkpoints import resolve_device
from demix.config import RunConfig
from demix.errors import DemixError
from demix.evaluation.benchmarks import (
    Benchmark,
    Capability,
    EvalResult,
    aggregate_capabilities,
    resolve_benchmarks,
    resolve_capabilities,
)
from demix.evaluation.heldout import HeldoutLoss, load_heldout_set, token_byte_lengths
from demix.packing import PackedTokens, split_prefix
from demix.rundir import RunDir

log = logging.getLogger("demix.evaluation")


class Evaluator:
    """Scores models on a fixed set of benchmarks and groups them into capabilities."""

    def __init__(
        self,
        benchmarks: Sequence[Benchmark],
        capabilities: Sequence[Capability],
        heldout: HeldoutLoss | None = None,
        harness: Any = None,
    ) -> None:
        self.heldout = heldout
        self.harness = harness
        # lm_eval benchmarks come back from the harness with their metric and direction filled in.
        resolved = {b.name: b for b in (harness.benchmarks if harness is not None else [])}
        self.benchmarks = [resolved.get(b.name, b) for b in benchmarks]
        for b in self.benchmarks:
            if b.higher_is_better is None or b.metric is None:
                raise DemixError(f"benchmark '{b.name}' has no resolved metric/direction", "report this as a demix bug")
        self.capabilities = list(capabilities)

    @property
    def higher_is_better(self) -> dict[str, bool]:
        """{benchmark name: whether its raw value is better when higher}."""
        return {b.name: bool(b.higher_is_better) for b in self.benchmarks}

    @classmethod
    def from_run(cls, config: RunConfig, run: RunDir, device: str | torch.device | None = None) -> Evaluator:
        """Prepare a run's evaluation once: held-out windows on ``device`` (default
        ``evaluation.device``), the run's tokenizer, the lm-eval tasks (shipped ones written to
        ``run.eval_tasks``)."""
        from demix.tokenizer import load_tokenizer

        ev = config.evaluation
        device = torch.device(resolve_device(str(device) if device is not None else ev.device, "evaluation.device"))
        benchmarks = resolve_benchmarks(config)
        capabilities = resolve_capabilities(config, benchmarks)
        tokenizer = load_tokenizer(run.tokenizer)

        heldout = None
        domains = list(dict.fromkeys(b.heldout_domain for b in benchmarks if b.evaluator == "heldout_loss"))
        if domains:
            byte_lengths = token_byte_lengths(tokenizer)
            sets = {
                d: load_heldout_set(
                    split_prefix(run.data, d, "heldout"), d, config.model.seq_len, ev.heldout_tokens, byte_lengths, device
                )
                for d in domains
            }
            heldout = HeldoutLoss(sets, ev.batch_size, auto_batch=ev.auto_batch_size)

        harness = None
        lm_benchmarks = [b for b in benchmarks if b.evaluator == "lm_eval"]
        if lm_benchmarks:
            from demix.evaluation.harness import Harness
            from demix.evaluation.local_tasks import HELDOUT_MC_PREFIX, materialize_tasks

            wanted = {b.lm_task for b in lm_benchmarks}
            mc_domains = [t[len(HELDOUT_MC_PREFIX) :] for t in wanted if t.startswith(HELDOUT_MC_PREFIX)]
            packed = {
                d: PackedTokens(split_prefix(run.data, d, "heldout"))
                for d in mc_domains
                if d in config.data.domain_names
            }
            shipped = materialize_tasks(
                run.eval_tasks, wanted, seed=ev.seed, heldout=packed, tokenizer=tokenizer, max_answer_tokens=config.model.seq_len
            )
            dirs: list[Path] = ([run.eval_tasks] if shipped else []) + [Path(d) for d in ev.task_dirs]
            harness = Harness(
                lm_benchmarks,
                dirs,
                tokenizer,
                batch_size=ev.batch_size,
                seed=ev.seed,
                shared_context=ev.lm_eval_path == "shared_context",
                auto_batch=ev.auto_batch_size,
            )
        return cls(benchmarks, capabilities, heldout, harness)

    def evaluate(self, model: torch.nn.Module, lm_samples: dict[str, list[int]] | None = None) -> EvalResult:
        """Score ``model`` on every benchmark; capabilities are sign-corrected (higher is better).

        ``lm_samples``: {lm_eval task: document indices} scored instead of the run's fixed
        subsets (screening: :func:`demix.evaluation.screening.screen`)."""
        start = time.perf_counter()
        values: dict[str, float] = {}
        details: dict[str, dict[str, Any]] = {}
        if self.heldout is not None:
            per_domain = self.heldout.evaluate(model)
            for b in self.benchmarks:
                if b.evaluator == "heldout_loss":
                    d = per_domain[b.domain]
                    values[b.name] = d[b.metric]
                    details[b.name] = {"domain": b.domain, **d}
        if self.harness is not None:
            lm_values, lm_details = self.harness.evaluate(model, lm_samples)
            values.update(lm_values)
            details.update(lm_details)
        # Results are keyed by name, in the config's order.
        values = {b.name: values[b.name] for b in self.benchmarks}
        directions = self.higher_is_better
        return EvalResult(
            benchmarks=values,
            capabilities=aggregate_capabilities(values, directions, self.capabilities),
            higher_is_better=directions,
            metrics={b.name: str(b.metric) for b in self.benchmarks},
            details=details,
            seconds=time.perf_counter() - start,
        )
