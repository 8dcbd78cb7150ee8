"""Executors: where proxy evaluations run.

- ``local`` (default): in this process, one mixture after the other.
- ``ray``: on a Ray cluster, one actor per GPU (or CPU slot), each with a resident proxy model;
  results stream back into the store as they finish, and a dead actor's mixture is re-queued.

    from demix.executors import make_executor
    with make_executor(config, run) as executor:
        run_search(config, run, None, token_counts, executor=executor)

(what :func:`demix.search.search` does for ``demix search`` and ``demix run``).

Any executor implements ``evaluate(items, on_result)`` (see :mod:`demix.executors.base`); the
search calls it through :func:`evaluate_planned`, which claims each mixture in the store just
before it is dispatched, so several drivers can share one round.
"""

from __future__ import annotations

from typing import Any

from demix.errors import DemixError
from demix.executors.base import Executor, LocalExecutor, OnResult, Scorer, WorkItem, evaluate_planned
from demix.executors.scorers import MergedProxyScorer, ProxyScorerFactory

EXECUTORS = ("local", "ray")


def make_executor(config: Any, run: Any, scorer: Scorer | None = None, device: str | None = None) -> Executor:
    """The executor ``config.executor.kind`` asks for.

    local: ``scorer`` (default: the run's :class:`MergedProxyScorer` on ``device``, which loads
    nothing until the first mixture is scored).
    ray: actors built from the run directory (``executor.*`` sets address, workers, CPUs, GPUs);
    ``scorer`` is not used, since each actor builds its own.
    """
    ex = config.executor
    if ex.kind == "local":
        return LocalExecutor(scorer or ProxyScorerFactory.from_run(config, run, device)())
    if ex.kind == "ray":
        from demix.executors.ray_executor import RayExecutor

        dev = device or ex.device
        if dev == "auto":
            dev = "cuda" if ex.num_gpus > 0 else "cpu"
        return RayExecutor(
            ProxyScorerFactory.from_run(config, run, dev),
            address=ex.address,
            num_workers=ex.num_workers,
            num_cpus=ex.num_cpus,
            num_gpus=ex.num_gpus,
            max_restarts=ex.max_restarts,
        )
    raise DemixError(f"unknown executor '{ex.kind}'", f"set executor.kind to one of {', '.join(EXECUTORS)}")


__all__ = [
    "EXECUTORS",
    "Executor",
    "LocalExecutor",
    "MergedProxyScorer",
    "OnResult",
    "ProxyScorerFactory",
    "Scorer",
    "WorkItem",
    "evaluate_planned",
    "make_executor",
]
