"""The executor interface and the in-process executor.

An executor scores mixtures somewhere (this process, a Ray cluster) and hands every result back
to the driver as soon as it is ready; the driver commits it to the store before anything else.

    executor.evaluate(items, on_result)

``items`` yields ``(plan_index, mixture)`` pairs and is advanced lazily, only when a worker is
free, so that the driver claims a mixture in the store just before it is dispatched (several
drivers can then share one round). ``on_result(plan_index, mixture, result)`` runs in the driver
process, in completion order; ``result`` has ``.benchmarks`` and ``.capabilities`` (an object or
a mapping), as a scorer's result.

``executor.evaluate(items, on_result, screening=0.25)`` screens instead: each mixture is scored by
``scorer.screen(mixture, 0.25)`` (the lm_eval tasks on a quarter of their documents,
:mod:`demix.search.screening`), whose result also names the documents it used.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

from demix.errors import DemixError
from demix.mixtures import mixture_key
from demix.proxy_kind import MERGED

log = logging.getLogger("demix.executors")

Mixture = dict[str, float]
WorkItem = tuple[int, Mixture]
#: Called in the driver for each finished evaluation: (plan index, mixture, scorer result).
OnResult = Callable[[int, Mixture, Any], None]
Scorer = Callable[[Mixture], Any]


class Executor:
    """Where proxy evaluations run. Subclasses implement :meth:`evaluate`; use as a context manager."""

    name: ClassVar[str] = "executor"

    @property
    def num_workers(self) -> int:
        """How many mixtures are evaluated at the same time."""
        return 1

    @property
    def setup_seconds(self) -> float | None:
        """What building the scorer(s) cost, when known (None otherwise)."""
        return None

    def evaluate(  # pragma: no cover - abstract
        self, items: Iterable[WorkItem], on_result: OnResult, screening: float | None = None
    ) -> None:
        """Score every item (``screening``: screen it on that fraction of each lm_eval task's
        documents); call ``on_result`` in this process as each one finishes."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the workers."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class LocalExecutor(Executor):
    """Scores mixtures one after the other in this process with ``scorer(mixture)``."""

    name = "local"

    def __init__(self, scorer: Scorer) -> None:
        if not callable(scorer):
            raise DemixError(f"the local executor needs a scorer callable, got {type(scorer).__name__}", "pass scorer(mixture) -> result")
        self.scorer = scorer

    @property
    def setup_seconds(self) -> float | None:
        """The scorer's ``setup_seconds`` (the merged-proxy scorer's: 0 until its first call)."""
        seconds = getattr(self.scorer, "setup_seconds", None)
        return float(seconds) if isinstance(seconds, (int, float)) else None

    def evaluate(self, items: Iterable[WorkItem], on_result: OnResult, screening: float | None = None) -> None:
        score = self.scorer if screening is None else screening_scorer(self.scorer, screening)
        for index, mixture in items:
            on_result(index, mixture, score(mixture))


def screening_scorer(scorer: Any, fraction: float) -> Scorer:
    """``mixture -> scorer.screen(mixture, fraction)``; a DemixError when the scorer cannot screen
    (a caller's own scorer without a ``screen`` method)."""
    screen = getattr(scorer, "screen", None)
    if not callable(screen):
        raise DemixError(
            f"search.screening is on, but the scorer ({type(scorer).__name__}) has no screen(mixture, fraction) method",
            "turn search.screening.enabled off, or give the scorer a screen method "
            "(demix.executors.MergedProxyScorer has one)",
        )
    return lambda mixture: screen(mixture, fraction)


def result_parts(result: Any) -> tuple[dict[str, float], dict[str, float], dict[str, bool] | None]:
    """benchmarks, capabilities and (optional) directions of a scorer's result (an object or a
    mapping with ``benchmarks`` and ``capabilities``: the contract every executor hands back)."""
    get = result.get if isinstance(result, Mapping) else lambda k, d=None: getattr(result, k, d)
    benchmarks, capabilities = get("benchmarks"), get("capabilities")
    if not isinstance(benchmarks, Mapping) or not isinstance(capabilities, Mapping):
        raise DemixError(
            f"the scorer returned {type(result).__name__}, without .benchmarks and .capabilities mappings",
            "return an EvalResult (demix.evaluation) or an object with those two dicts",
        )
    hib = get("higher_is_better")
    return dict(benchmarks), dict(capabilities), dict(hib) if isinstance(hib, Mapping) else None


def evaluate_planned(
    executor: Executor,
    store: Any,
    planned: Sequence[Mapping[str, float]],
    commit: Callable[[int, Mixture, Any], bool],
    *,
    round: int | None,
    proxy_kind: str = MERGED,
    wait_seconds: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
    screening: float | None = None,
    indices: Sequence[int] | None = None,
) -> int:
    """Evaluate a round's planned mixtures that the store does not hold yet; return how many this
    driver stored.

    Each mixture is claimed in ``store`` just before it is dispatched (a mixture another driver
    holds is skipped), and ``commit(index, mixture, result)`` stores each result as it arrives
    (True when stored). Then, while mixtures held by other drivers are unfinished, this driver
    waits (polling every ``wait_seconds``) and claims again: claims of drivers that died are
    re-queued here. On return every planned mixture is done, so all drivers fit the next round on
    the same evaluations. ``screening``: screen each mixture on that fraction of the documents
    (``proxy_kind`` is then the screened kind, :func:`demix.proxy_kind.screened`). ``indices``:
    evaluate only these of ``planned`` (the survivors of a screen), with their plan indices.
    """
    keys = [mixture_key(m) for m in planned]
    remaining = list(range(len(planned))) if indices is None else list(indices)
    stored = 0

    def on_result(index: int, mixture: Mixture, result: Any) -> None:
        nonlocal stored
        if commit(index, mixture, result):
            stored += 1
        store.renew()  # the claims still in flight stay ours

    def claimed(indices: list[int]) -> Iterator[WorkItem]:
        for i in indices:
            m = {d: float(w) for d, w in planned[i].items()}
            if store.claim(m, proxy_kind, round, {"round": round, "plan_index": i}):
                yield i, m

    waited = 0.0
    while True:
        done = store.done_keys(proxy_kind)
        remaining = [i for i in remaining if keys[i] not in done]
        if not remaining:
            return stored
        if waited:
            log.info("round %s: %d mixture(s) held by other drivers; waited %.0f s", round, len(remaining), waited)
        before = stored
        if screening is None:  # executors written before screening take no such argument
            executor.evaluate(claimed(remaining), on_result)
        else:
            executor.evaluate(claimed(remaining), on_result, screening=screening)
        done = store.done_keys(proxy_kind)
        remaining = [i for i in remaining if keys[i] not in done]
        if remaining and stored == before:
            sleep(wait_seconds)
            waited += wait_seconds
