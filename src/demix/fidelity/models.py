"""The models the fidelity stage scores: trained (reference models, trained proxies) or merged,
each evaluated once and its scores kept in the run's store.

:class:`EvaluatedModels` answers "the scores of this model" from the store when it can, and
otherwise trains (or finds finished on disk), evaluates and stores it. Nothing is trained or
evaluated twice: a mixture with a current stored row is reused, and a finished model
directory is never retrained.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from demix import proxy_kind
from demix.config import RunConfig, TrainRecipe
from demix.errors import DemixError
from demix.fidelity.references import trained_recipe
from demix.mixtures import mixture_key
from demix.rundir import RunDir
from demix.search.settings import is_search_row

log = logging.getLogger("demix.fidelity")

#: What each evaluated model the stage reports on: (proxy kind, mixture key, action), with action
#: ``trained``, ``evaluated`` or ``reused``.
OnEvent = Callable[[str, str, str], None]


@dataclass
class ModelScores:
    """Scores of one model (from the store, or just evaluated and stored)."""

    benchmarks: dict[str, float]
    capabilities: dict[str, float]
    higher_is_better: dict[str, bool]
    reused: bool
    """True when the scores came from the store (nothing evaluated)."""
    trained: bool = False
    """True when the model was trained by this call."""


class EvaluatedModels:
    """The store's scored models of one run, extended on demand: trains, evaluates and stores
    models on mixtures, reusing everything already done.

    Holds the store, and one evaluator built on first use (held-out windows prepared once).
    ``on_event(kind, key, action)`` is called after each model (``action``: trained, evaluated,
    reused) so a caller can print progress. Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        config: RunConfig,
        run: RunDir,
        *,
        store: Any = None,
        device: str | None = None,
        progress: bool = True,
        on_event: OnEvent | None = None,
    ) -> None:
        from demix.store import Store

        self.config = config
        self.run = run
        self.device = device or config.evaluation.device
        self.progress = progress
        self.on_event = on_event or (lambda kind, key, action: None)
        self._own_store = store is None
        self.store = store if store is not None else Store(config.store.url or run.store_url)
        self._evaluator: Any = None
        self._expected: tuple[set[str], set[str]] | None = None
        self._components: str | None = None
        self._scoring: Any = None
        self._evidence: Any = None
        self.evaluations = 0
        """Evaluations run here (not read from the store)."""
        self.trainings = 0
        """Models trained here (not found finished on disk)."""

    def close(self) -> None:
        """Close the store when this object opened it."""
        if self._own_store:
            self.store.close()

    def __enter__(self) -> EvaluatedModels:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def evaluator(self) -> Any:
        """The run's :class:`demix.evaluation.Evaluator`, built on first use."""
        if self._evaluator is None:
            from demix.evaluation import Evaluator

            self._evaluator = Evaluator.from_run(self.config, self.run, self.device)
        return self._evaluator

    def _evaluate(self, model: Any) -> Any:
        self.evaluations += 1
        return self.evaluator.evaluate(model)

    @property
    def expected_names(self) -> tuple[set[str], set[str]]:
        """Benchmark and capability names the config asks for (a stored row with other names
        was scored on another benchmark set and is evaluated again)."""
        if self._expected is None:
            from demix.evaluation import resolve_benchmarks, resolve_capabilities

            benchmarks = resolve_benchmarks(self.config)
            caps = resolve_capabilities(self.config, benchmarks)
            self._expected = ({b.name for b in benchmarks}, {c.name for c in caps})
        return self._expected

    @property
    def components(self) -> str | None:
        """Fingerprint of the base and component checkpoints merged proxies are built from."""
        if self._components is None:
            from demix.checkpoints import components_fingerprint

            self._components = components_fingerprint(self.config, self.run) or ""
        return self._components or None

    @property
    def evidence(self) -> Any:
        """The :class:`~demix.search.evidence.Evidence` merged rows are judged by (each row on
        the base and the components it gave non-zero weight, as the search judges them)."""
        if self._evidence is None:
            from demix.search.evidence import Evidence

            self._evidence = Evidence.judge(self.config, self.run, [])
        return self._evidence

    @property
    def scoring(self) -> Any:
        """The :class:`~demix.search.settings.ScoringSettings` merged proxies are scored with."""
        if self._scoring is None:
            from demix.search.settings import ScoringSettings

            self._scoring = ScoringSettings.of(self.config)
        return self._scoring

    @property
    def trained_scoring(self) -> Any:
        """The evaluation settings a trained model's scores depend on (no merge settings)."""
        from demix.search.settings import ScoringSettings

        return ScoringSettings.of(self.config, merged=False)

    @property
    def _store_name(self) -> str:
        # Never print a server URL: it may hold a password.
        return "of store.url" if self.config.store.url else str(self.run.store_file)

    def check_search_rows(self, mixtures: Sequence[Mapping[str, float]]) -> None:
        """Refuse, before anything is trained, merged rows of the search among ``mixtures`` that
        were scored under other settings: the search's evaluations are never overwritten here,
        and never compared with scores of other settings (the search refuses them the same way)."""
        rows = [self.store.get(m, proxy_kind.MERGED) for m in mixtures]
        stale = [r for r in rows if r is not None and is_search_row(r) and self.scoring.is_stale(r)]
        if stale:
            raise self.scoring.refuse(stale, self._store_name)

    def _stored(
        self, mixture: Mapping[str, float], kind: str, recipe: dict[str, Any] | None = None
    ) -> tuple[ModelScores | None, Any]:
        """(stored scores of ``mixture`` for ``kind``, stale row). Scores are None when there is
        no row, or when the row was scored on other benchmarks than the config's: then the stale
        row is returned, and the caller evaluates the same model again and passes it to
        :meth:`_save`, which replaces it."""
        row = self.store.get(mixture, kind)
        if row is None:
            return None, None
        if kind == proxy_kind.REFERENCE and recipe is not None and row.provenance.get("registered"):
            # Scores of a registered model (fidelity.references) stand for no training here:
            # the reference this stage trains for that data mixture is scored and replaces them.
            return None, row
        had = row.provenance.get("recipe")
        if recipe is not None and had is not None and had != recipe:
            raise DemixError(
                f"the stored {kind} model of mixture {row.mixture_key} was trained with recipe {had}, "
                f"the config now says {recipe}",
                "restore the recipe in the config, or use a new output_dir for the new recipe",
            )
        if kind == proxy_kind.MERGED and not self.evidence.is_valid(row):
            # Judged per component (demix.search.evidence): a domain added since is weight 0 in
            # the row, so only a retrained base or component the row used refuses it.
            raise DemixError(
                f"the stored merged proxy of mixture {row.mixture_key} was built from other components: the base "
                f"or components were retrained or replaced since it was evaluated ({self.evidence.reason(row)}"
                + (f": {', '.join(self.evidence.detail[row.mixture_key])}" if row.mixture_key in self.evidence.detail
                   else "") + ")",
                "run the fidelity stage for the new components in a new output_dir, or delete this run's store "
                "to evaluate every proxy again",
            )
        if kind == proxy_kind.MERGED and self.scoring.is_stale(row):
            if is_search_row(row):
                raise self.scoring.refuse([row], self._store_name)
            # The stage's own proxy, scored under other evaluation or merge settings: scored again.
            log.info("merged %s was scored under other settings (%s); evaluating it again",
                     row.mixture_key, self.scoring.describe([row]))
            return None, row
        if kind != proxy_kind.MERGED and self.trained_scoring.is_stale(row):
            # The same trained model scored under other evaluation settings: scored again (the
            # finished model directory is reused, nothing is retrained).
            log.info("%s %s was scored under other settings (%s); evaluating it again",
                     kind, row.mixture_key, self.trained_scoring.describe([row]))
            return None, row
        benchmarks, capabilities = self.expected_names
        if set(row.benchmarks) != benchmarks or set(row.capabilities) != capabilities:
            log.info("%s %s was scored on other benchmarks (%s); evaluating it again",
                     kind, row.mixture_key, ", ".join(sorted(row.benchmarks)))
            return None, row
        hib = row.provenance.get("higher_is_better") or {}
        return ModelScores(dict(row.benchmarks), dict(row.capabilities), {k: bool(v) for k, v in hib.items()},
                           reused=True), None

    def _save(
        self, mixture: Mapping[str, float], kind: str, result: Any, provenance: dict[str, Any], stale: Any = None
    ) -> ModelScores:
        provenance = {**provenance, "higher_is_better": dict(result.higher_is_better), "source": "demix fidelity"}
        if stale is not None:
            # Same model, new benchmark set: the row is updated (keeping e.g. the search's round), never duplicated.
            self.store.replace(mixture, result.benchmarks, result.capabilities, kind, {**stale.provenance, **provenance})
        elif not self.store.add(mixture, result.benchmarks, result.capabilities, kind, None, provenance):
            # Another driver holds or finished this row meanwhile; our scores are still valid here.
            log.warning("mixture %s (%s) was stored by another process; using this evaluation unsaved", mixture_key(mixture), kind)
        return ModelScores(dict(result.benchmarks), dict(result.capabilities), dict(result.higher_is_better), reused=False)

    def trained_model(
        self, mixture: Mapping[str, float], kind: str, out_dir: Path, recipe: TrainRecipe, role: str
    ) -> ModelScores:
        """Scores of the model trained on the data mixture ``mixture`` with ``recipe`` (store kind ``kind``,
        provenance role ``role``): the stored row when there is one (nothing trained or
        evaluated), else train (or reuse a finished directory), evaluate and store."""
        key = mixture_key(mixture)
        want = _recipe_fingerprint(recipe)
        stored, stale = self._stored(mixture, kind, want)
        if stored is not None:
            self.on_event(kind, key, "reused")
            return stored
        from demix.training import train_on_mixture

        result = train_on_mixture(self.config, self.run, mixture, out_dir, recipe, role, show_progress=self.progress)
        if not result.skipped:
            self.trainings += 1
        ev = self._evaluate_checkpoint(result.path)
        prov = {"role": role, "model_dir": str(result.path), "recipe": want, **_recorded_training(result.path),
                **self.trained_scoring.provenance()}
        scored = self._save(mixture, kind, ev, prov, stale)
        scored.trained = not result.skipped
        self.on_event(kind, key, "trained" if not result.skipped else "evaluated")
        return scored

    def _evaluate_checkpoint(self, path: Path) -> Any:
        import torch

        from demix.checkpoints import resolve_device
        from demix.training import load_checkpoint, quiet_transformers

        with quiet_transformers():
            model = load_checkpoint(path, self.config.model.trust_remote_code, torch.float32)
        model.to(resolve_device(self.device, "evaluation.device")).eval()
        with torch.no_grad():
            ev = self._evaluate(model)
        del model
        return ev

    def reference(self, mixture: Mapping[str, float]) -> ModelScores:
        """The reference model trained on the data mixture ``mixture`` (reference recipe,
        ``models/references/<key of the data mixture>``, store kind ``reference`` keyed by it)."""
        from demix.training import reference_recipe

        return self.trained_model(
            mixture, proxy_kind.REFERENCE, self.run.reference(mixture_key(mixture)), reference_recipe(self.config),
            "reference",
        )

    def registered_reference(self, mixture: Mapping[str, float], path: Path) -> ModelScores:
        """The reference model trained elsewhere on the data mixture ``mixture`` and registered at
        ``path`` (``fidelity.references``): evaluated, never trained; stored as kind
        ``reference`` keyed by the data mixture, like the references this stage trains. A stored
        row of another model for that data mixture (one trained here, or registered elsewhere)
        is replaced by this model's scores."""
        key = mixture_key(mixture)
        stored, stale = self._stored(mixture, proxy_kind.REFERENCE)
        if stored is not None:
            row = self.store.get(mixture, proxy_kind.REFERENCE)
            if row is not None and row.provenance.get("registered") and row.provenance.get("model_dir") == str(path):
                self.on_event(proxy_kind.REFERENCE, key, "reused")
                return stored
            stale = row
        ev = self._evaluate_checkpoint(path)
        prov = {"role": "reference", "model_dir": str(path), "registered": True, "recipe": None,
                **_recorded_training(path), **self.trained_scoring.provenance()}
        scored = self._save(mixture, proxy_kind.REFERENCE, ev, prov, stale)
        self.on_event(proxy_kind.REFERENCE, key, "evaluated")
        return scored

    def trained_proxy(self, mixture: Mapping[str, float], tokens: int) -> ModelScores:
        """The trained proxy on the data mixture ``mixture`` at a ``tokens`` budget
        (``models/trained_proxies/<key of the data mixture>@<tokens>``)."""
        return self.trained_model(
            mixture,
            proxy_kind.trained(tokens),
            self.run.trained_proxy(f"{mixture_key(mixture)}@{int(tokens)}"),
            trained_recipe(self.config, tokens),
            "trained_proxy",
        )

    def merged(self, mixture: Mapping[str, float], builder: Any) -> ModelScores:
        """Build the merged proxy of the component weights ``mixture`` into ``builder.model``
        (always: its weights are needed for the proxy gap) and score it, reusing a stored merged
        evaluation (keyed by the component weights, as the search's)."""
        builder.build(mixture)
        key = mixture_key(mixture)
        stored, stale = self._stored(mixture, proxy_kind.MERGED)
        if stored is not None:
            self.on_event(proxy_kind.MERGED, key, "reused")
            return stored
        import torch

        from demix.search.evidence import CHECKPOINTS_KEY

        with torch.no_grad():
            ev = self._evaluate(builder.model)
        scored = self._save(
            mixture, proxy_kind.MERGED, ev,
            {"merge_method": self.config.merge.method, "round": None, "components": self.components,
             CHECKPOINTS_KEY: self.evidence.checkpoints.record(mixture), **self.scoring.provenance()}, stale,
        )
        self.on_event(proxy_kind.MERGED, key, "evaluated")
        return scored


def _recipe_fingerprint(recipe: TrainRecipe) -> dict[str, Any]:
    """What makes two trainings on the same mixture the same model (stored with every row)."""
    return {k: v for k, v in recipe.model_dump(mode="json").items() if k != "save_every_steps"}


def _recorded_training(path: Path) -> dict[str, Any]:
    """``tokens_seen`` and ``base_hash`` from the model's provenance record (None without one)."""
    from demix.checkpoints import is_finished, read_provenance

    if not is_finished(path):
        return {"tokens_seen": None, "base_hash": None}
    prov = read_provenance(path)
    return {"tokens_seen": prov.tokens_seen, "base_hash": prov.base_hash}
