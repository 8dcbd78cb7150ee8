"""The merged-proxy scorer, as a picklable recipe that each worker turns into a resident scorer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from demix.executors.base import Mixture, Scorer


@dataclass(frozen=True)
class ProxyScorerFactory:
    """Builds, in whatever process calls it, the scorer of a run: one resident model with the
    stacked deltas (:class:`demix.merging.ProxyBuilder`) and the prepared benchmarks
    (:class:`demix.evaluation.Evaluator`). Holds only plain data, so Ray can ship it to actors."""

    config: dict[str, Any]
    """The resolved run config (``RunConfig.model_dump(mode="json")``)."""

    run_root: str
    """The run directory (shared by every worker: a network file system on a cluster)."""

    device: str = "auto"
    """Device of the proxy and the evaluation in the worker."""

    @classmethod
    def from_run(cls, config: Any, run: Any, device: str | None = None) -> "ProxyScorerFactory":
        """The factory for a :class:`RunConfig` and :class:`RunDir`; device default ``evaluation.device``."""
        return cls(config.model_dump(mode="json"), str(Path(run.root).resolve()), device or config.evaluation.device)

    def __call__(self) -> Scorer:
        from demix.config import RunConfig
        from demix.evaluation import Evaluator
        from demix.merging import ProxyBuilder
        from demix.rundir import RunDir

        config = RunConfig.model_validate(self.config)
        run = RunDir(Path(self.run_root))
        builder = ProxyBuilder.from_run(config, run, self.device)
        evaluator = Evaluator.from_run(config, run, self.device)

        def scorer(mixture: Mixture) -> Any:
            builder.build(mixture)
            return evaluator.evaluate(builder.model)

        return scorer
