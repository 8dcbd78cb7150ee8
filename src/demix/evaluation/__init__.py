"""Evaluation: held-out loss per domain and lm-evaluation-harness tasks, scored on resident proxies.

Pure pieces (no torch; safe to import from the search, store and report):

- :func:`resolve_benchmarks`, :func:`resolve_capabilities`: the run's benchmarks and
  capabilities with defaults filled in (one ``heldout:<domain>`` benchmark and one capability
  per domain when the config lists none).
- :class:`EvalResult`, :func:`aggregate_capabilities`, :func:`sign_correct`.

Heavy pieces (torch; imported on first use):

- :class:`Evaluator`: ``Evaluator.from_run(config, run, device).evaluate(model) -> EvalResult``.
- :class:`HeldoutLoss`, :func:`token_byte_lengths` (``demix.evaluation.heldout``).
- :class:`Harness` (``demix.evaluation.harness``), shipped tasks (``demix.evaluation.local_tasks``).
- Shared-context log-likelihood scoring (``demix.evaluation.multiple_choice``, the default path
  of log-likelihood tasks), batch sizes from free GPU memory (``demix.evaluation.batching``),
  screening on fixed item subsets (``demix.evaluation.screening``), gradients of held-out loss
  and of gold-choice log-likelihoods (``demix.evaluation.gradient``).
"""

from __future__ import annotations

from typing import Any

from demix._lazy import lazy_attribute
from demix.evaluation.benchmarks import (
    HELDOUT_METRICS,
    Benchmark,
    Capability,
    EvalResult,
    aggregate_capabilities,
    heldout_benchmark_name,
    resolve_benchmarks,
    resolve_capabilities,
    sign_correct,
)

_LAZY = {
    "Evaluator": "demix.evaluation.evaluator",
    "HeldoutLoss": "demix.evaluation.heldout",
    "token_byte_lengths": "demix.evaluation.heldout",
    "Harness": "demix.evaluation.harness",
    "materialize_tasks": "demix.evaluation.local_tasks",
}


def __getattr__(name: str) -> Any:
    return lazy_attribute(__name__, _LAZY, name)


__all__ = [
    "HELDOUT_METRICS",
    "Benchmark",
    "Capability",
    "EvalResult",
    "aggregate_capabilities",
    "heldout_benchmark_name",
    "resolve_benchmarks",
    "resolve_capabilities",
    "sign_correct",
    *_LAZY,
]
