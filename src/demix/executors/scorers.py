"""The merged-proxy scorer of a run, and the picklable recipe each worker builds it from.

This is the one scorer of merged proxies: ``demix search``, ``demix run`` and every Ray actor
score mixtures with it. It writes the merged proxy of a mixture into one resident model and
evaluates it."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from demix.errors import DemixError
from demix.executors.base import Mixture

if TYPE_CHECKING:
    from demix.config import RunConfig
    from demix.rundir import RunDir

log = logging.getLogger("demix.executors")


class MergedProxyScorer:
    """``scorer(mixture)``: build the mixture's merged proxy into the resident model, evaluate it.

    The proxy builder (base and stacked deltas, loaded once) and the evaluator (benchmarks
    tokenised once) are built by :meth:`setup`, on the first call unless called before: a
    resumed search whose evaluations are all in the store never loads a model."""

    def __init__(self, config: RunConfig, run: RunDir, device: str) -> None:
        self.config, self.run, self.device = config, run, device
        self.setup_seconds = 0.0
        """What :meth:`setup` took (0 until it ran)."""
        self._builder: Any = None
        self._evaluator: Any = None
        self._screening: dict[float, dict[str, list[int]]] = {}
        """Fraction -> the screened documents of every lm_eval task (drawn once per fraction)."""

    def setup(self) -> None:
        """Load the base, the components and the benchmarks (once)."""
        if self._builder is not None:
            return
        try:
            from demix.evaluation import Evaluator
            from demix.merging import ProxyBuilder
        except ImportError as exc:
            raise DemixError(
                f"the proxy builder or evaluator cannot be imported ({exc})", "reinstall demix: pip install -e '.[eval]'"
            ) from None
        from transformers.utils import logging as hf_logging

        t0 = time.perf_counter()
        # transformers' "Loading weights" bar would break the search's own progress display.
        was_enabled = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            builder = ProxyBuilder.from_run(self.config, self.run, self.device)
            self._evaluator = Evaluator.from_run(self.config, self.run, self.device)
            self._builder = builder
        finally:
            if was_enabled:
                hf_logging.enable_progress_bar()
        self.setup_seconds = time.perf_counter() - t0
        log.info("proxy builder and evaluator ready in %.1f s", self.setup_seconds)

    @property
    def builder(self) -> Any:
        """The resident :class:`demix.merging.ProxyBuilder` (after :meth:`setup`)."""
        self.setup()
        return self._builder

    @property
    def evaluator(self) -> Any:
        """The prepared :class:`demix.evaluation.Evaluator` (after :meth:`setup`)."""
        self.setup()
        return self._evaluator

    def __call__(self, mixture: Mixture) -> Any:
        self.setup()
        self._builder.build(mixture)
        return self._evaluator.evaluate(self._builder.model)

    def screen(self, mixture: Mixture, fraction: float) -> Any:
        """The mixture's proxy scored with every lm_eval task on its screening subset (``fraction``
        of its documents, the same for every proxy: :mod:`demix.evaluation.screening`); held-out
        benchmarks in full. The result's details name the documents each benchmark used."""
        from demix.evaluation.screening import screen, screening_samples

        self.setup()
        if self._evaluator.harness is None:
            raise DemixError(
                "search.screening is on, but no benchmark is an lm_eval task: there is nothing to screen",
                "turn search.screening.enabled off, or add an lm_eval benchmark to evaluation.benchmarks",
            )
        if fraction not in self._screening:
            self._screening[fraction] = screening_samples(self._evaluator.harness, fraction)
        self._builder.build(mixture)
        return screen(self._evaluator, self._builder.model, self._screening[fraction])


@dataclass(frozen=True)
class ProxyScorerFactory:
    """Builds, in whatever process calls it, the :class:`MergedProxyScorer` of a run (one
    resident model with the stacked deltas, :class:`demix.merging.ProxyBuilder`, and the
    prepared benchmarks, :class:`demix.evaluation.Evaluator`). Holds only plain data, so Ray
    can ship it to actors."""

    config: dict[str, Any]
    """The resolved run config (``RunConfig.model_dump(mode="json")``)."""

    run_root: str
    """The run directory (shared by every worker: a network file system on a cluster)."""

    device: str = "auto"
    """Device of the proxy and the evaluation in the worker."""

    @classmethod
    def from_run(cls, config: RunConfig, run: RunDir, device: str | None = None) -> ProxyScorerFactory:
        """The factory for a :class:`RunConfig` and :class:`RunDir`; ``device`` None or auto:
        ``evaluation.device``."""
        dev = device if device not in (None, "auto") else config.evaluation.device
        return cls(config.model_dump(mode="json"), str(Path(run.root).resolve()), dev)

    def __call__(self) -> MergedProxyScorer:
        """The scorer; nothing is loaded until its first call (or :meth:`MergedProxyScorer.setup`)."""
        from demix.config import RunConfig
        from demix.rundir import RunDir

        return MergedProxyScorer(RunConfig.model_validate(self.config), RunDir(Path(self.run_root)), self.device)
