"""The Ray executor: one actor per GPU (or per CPU slot), each with a resident proxy model.

Each actor builds its scorer once (for a run: the base, the stacked deltas and the tokenised
benchmarks, see :class:`~demix.executors.scorers.ProxyScorerFactory`) and then receives
mixtures and returns scores. The driver keeps every actor busy with one mixture, hands each
result to ``on_result`` as it arrives (it is committed to the store there), and dispatches the
next mixture to the actor that became free.

Failures: an actor whose process dies (killed, out of memory, node lost) loses only the mixture
it was evaluating. The mixture is re-queued to the next free actor and Ray restarts the actor
(``max_restarts``); an actor that keeps dying is dropped, and the run fails only when none is
left. An exception raised by the scorer itself (bad input, a bug) is not retried: it is raised in
the driver.

Ray does the scheduling, placement and restarts; this module only keeps the queue. Results
equal the local executor's for the same mixtures: each proxy's scores depend on the mixture
alone, not on which actor computed them or when.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from demix.errors import DemixError, require
from demix.executors.base import Executor, OnResult, Scorer, WorkItem

log = logging.getLogger("demix.executors.ray")

#: Seconds between readiness checks of an actor that Ray is restarting.
_RETRY_SECONDS = 0.5


class _Worker:
    """The actor body: builds the scorer once, then scores mixtures."""

    def __init__(self, factory: Callable[[], Scorer], num_threads: int) -> None:
        import torch

        # Ray pins OMP_NUM_THREADS to the actor's CPUs; torch must agree or actors oversubscribe.
        torch.set_num_threads(max(1, num_threads))
        self.scorer = factory()
        # Build now, not on the first mixture: a bad run directory fails when the actors
        # start, once, and a restarted actor is ready when Ray reports it alive.
        setup = getattr(self.scorer, "setup", None)
        if callable(setup):
            setup()

    def pid(self) -> int:
        return os.getpid()

    def score(self, mixture: dict[str, float], screening: float | None = None) -> dict[str, Any]:
        from demix.evaluation.screening import screened_documents
        from demix.executors.base import screening_scorer

        result = self.scorer(mixture) if screening is None else screening_scorer(self.scorer, screening)(mixture)
        get: Callable[..., Any] = result.get if isinstance(result, dict) else lambda k, d=None: getattr(result, k, d)
        hib = get("higher_is_better")
        # Plain dicts travel cheaply and unpickle without demix's classes in the driver.
        return {
            "benchmarks": {k: float(v) for k, v in get("benchmarks").items()},
            "capabilities": {k: float(v) for k, v in get("capabilities").items()},
            "higher_is_better": dict(hib) if hib is not None else None,
            "screened": screened_documents(result),
        }


class RayExecutor(Executor):
    """Evaluates mixtures on Ray actors, each holding the scorer ``factory()`` builds.

    ``address``: an existing cluster (``auto``, ``ray://head:10001``, ``head:6379``); None starts
    a local one (or reuses the one ``ray.init`` already started in this process).
    ``num_workers``: actors; None: one per GPU when ``num_gpus`` > 0, else one per
    ``num_cpus`` CPUs of the cluster.
    """

    name = "ray"

    def __init__(
        self,
        factory: Callable[[], Scorer],
        *,
        address: str | None = None,
        num_workers: int | None = None,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        max_restarts: int = 3,
        init_kwargs: dict[str, Any] | None = None,
    ) -> None:
        ray = require("ray", "ray")
        self._ray = ray
        self._owns_cluster = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "WARNING", **(init_kwargs or {})}
            if address is None and num_workers is not None and "num_cpus" not in kwargs:
                kwargs["num_cpus"] = max(1, int(round(num_workers * num_cpus)))
            try:
                ray.init(address=address, **kwargs)
            except ConnectionError as exc:
                raise DemixError(
                    f"cannot connect to the Ray cluster at '{address}' ({exc})",
                    "start it with `ray start --head` (or fix executor.address; leave it empty for a local cluster)",
                ) from None
            self._owns_cluster = address is None
        self.num_cpus, self.num_gpus, self.max_restarts = num_cpus, num_gpus, max_restarts
        n = num_workers or self._default_workers()
        if n < 1:
            raise DemixError(
                f"the Ray cluster has no room for an actor with {num_cpus} CPU(s) and {num_gpus} GPU(s)",
                "lower executor.num_cpus / executor.num_gpus, or add nodes to the cluster",
            )
        self._actor_cls = ray.remote(_Worker).options(
            num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=max_restarts, max_task_retries=0
        )
        self._factory = factory
        t0 = time.perf_counter()
        self._actors = [self._new_actor() for _ in range(n)]
        self._deaths = [0] * n
        #: Mixtures re-queued because their actor died, and actors restarted, over this executor's life.
        self.requeued = 0
        self.dead_actors = 0
        try:  # wait for every actor to build its scorer: a bad run directory fails here, once
            self._pids = ray.get([a.pid.remote() for a in self._actors])
        except ray.exceptions.RayError as exc:
            self.close()
            raise _as_demix_error(exc, "starting the Ray actors") from None
        self._setup_seconds = time.perf_counter() - t0
        log.info("ray executor: %d actors (%s CPU, %s GPU each)", n, num_cpus, num_gpus)

    def _new_actor(self):
        return self._actor_cls.remote(self._factory, max(1, int(self.num_cpus)))

    def _default_workers(self) -> int:
        res = self._ray.cluster_resources()
        if self.num_gpus > 0:
            return int(res.get("GPU", 0) // self.num_gpus)
        return int(res.get("CPU", 0) // self.num_cpus)

    @property
    def num_workers(self) -> int:
        return len(self._actors)

    @property
    def setup_seconds(self) -> float | None:
        """Start-up of the actors: each builds its scorer (in parallel) before it is used."""
        return self._setup_seconds

    def worker_pids(self, timeout: float = 600.0) -> list[int]:
        """Process ids of the actors (current incarnations; waits for restarting ones).

        A restart re-imports torch and reloads the components: on a loaded 2-core machine that
        was measured at over 2 minutes, hence the generous default."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self._ray.get([a.pid.remote() for a in self._actors])
            except self._ray.exceptions.ActorUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(_RETRY_SECONDS)

    def evaluate(self, items: Iterable[WorkItem], on_result: OnResult, screening: float | None = None) -> None:
        ray = self._ray
        unavailable = ray.exceptions.ActorUnavailableError
        source = iter(items)
        requeued: deque[WorkItem] = deque()
        free = deque(range(len(self._actors)))
        in_flight: dict[Any, tuple[int, WorkItem]] = {}  # score tasks
        probes: dict[Any, int] = {}  # readiness checks of restarting actors
        retry: list[tuple[float, int]] = []  # actors to probe again (still restarting)
        exhausted = False
        while True:
            now = time.monotonic()
            for t, a in [x for x in retry if x[0] <= now]:
                retry.remove((t, a))
                probes[self._actors[a].pid.remote()] = a
            while free and (requeued or not exhausted):
                item = requeued.popleft() if requeued else next(source, None)
                if item is None:
                    exhausted = True
                    break
                a = free.popleft()
                in_flight[self._actors[a].score.remote(item[1], screening)] = (a, item)
            if not in_flight and not requeued and exhausted:
                return
            if not (in_flight or probes or retry):  # work left, but every actor is gone
                raise DemixError(
                    f"all Ray actors died; {len(requeued)} mixture(s) left unevaluated (rerun to evaluate them)",
                    "check the actors' logs (out of memory?) and rerun: finished evaluations are in the store",
                )
            waitable = [*in_flight, *probes]
            if not waitable:
                time.sleep(_RETRY_SECONDS)
                continue
            ready, _ = ray.wait(waitable, num_returns=1, timeout=_RETRY_SECONDS if retry else None)
            if not ready:
                continue
            ref = ready[0]
            if ref in probes:
                a = probes.pop(ref)
                try:
                    ray.get(ref)
                    free.append(a)  # restarted: its scorer is built again
                except unavailable:
                    retry.append((time.monotonic() + _RETRY_SECONDS, a))
                except ray.exceptions.RayActorError:
                    self.dead_actors += 1  # out of restarts
                continue
            a, item = in_flight.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                # The actor's process died: only its current mixture is lost; run it elsewhere.
                self.requeued += 1
                requeued.append(item)
                log.warning("ray actor %d failed (%s); mixture %d re-queued", a, type(exc).__name__, item[0])
                if isinstance(exc, unavailable):
                    retry.append((time.monotonic() + _RETRY_SECONDS, a))
                    continue
                self._deaths[a] += 1
                if self._deaths[a] <= self.max_restarts:
                    probes[self._actors[a].pid.remote()] = a  # Ray restarts it; use it once it is back
                else:
                    self.dead_actors += 1
                continue
            except ray.exceptions.RayTaskError as exc:
                raise _as_demix_error(exc, f"evaluating mixture {item[0]}") from None
            free.append(a)
            on_result(item[0], item[1], result)

    def close(self) -> None:
        ray = self._ray
        for a in getattr(self, "_actors", []):
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # already gone
                pass
        self._actors = []
        if self._owns_cluster and ray.is_initialized():
            ray.shutdown()
            self._owns_cluster = False


def _as_demix_error(exc: Exception, doing: str) -> Exception:
    """The scorer's own DemixError when that is what failed in the actor (Ray ships it as the
    cause, or only as traceback text when the actor's constructor failed); otherwise a
    DemixError naming what failed."""
    cause = getattr(exc, "cause", None)
    for _ in range(8):
        if cause is None or isinstance(cause, DemixError):
            break
        cause = getattr(cause, "cause", None)
    if isinstance(cause, DemixError):
        return cause
    text = str(exc)
    found = re.search(r"DemixError: (.+?)\n\s*fix: (.+?)(?:\n|$)", text)
    if found:
        return DemixError(found.group(1).strip(), found.group(2).strip())
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return DemixError(f"{doing} on Ray failed: {lines[-1] if lines else type(exc).__name__}", "see the traceback in the Ray worker logs")
