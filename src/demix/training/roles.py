"""What each model of a run is trained on and from, whichever backend trains it: the
components' mixtures, the reference recipe, the steps a budget buys, the base training
continues from, the checkpoints a user hands to the run, and which components are ready to merge.

    component_mixture(config, "math")   # {"general": 0.5, "math": 0.5}
    mixture_map(config, run)            # component weights -> data mixture (demix.data_mixture)
    finished_components(config, run)    # {domain: directory} ready for demix.merging
    check_given_checkpoints(config, run)  # model.base_path, train.components.paths: before any work

Torch-free on import: the command backend (your own trainer) uses these without torch; only
:func:`check_given_checkpoints` asks transformers which model types it knows.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from demix.checkpoints import (
    CONFIG_FILE,
    Layout,
    base_dir,
    check_compatible,
    check_loadable,
    component_dirs,
    is_finished,
    read_provenance,
    safetensors_files,
    shard_map,
)
from demix.config import TrainRecipe
from demix.data_mixture import ASSUMED, DECLARED, RECIPE, RECORDED, MixtureMap, standard_mixture
from demix.errors import DemixError

if TYPE_CHECKING:
    from demix.config import RunConfig
    from demix.rundir import RunDir

log = logging.getLogger("demix.training")


def component_mixture(config: RunConfig, domain: str) -> dict[str, float]:
    """The training mixture of ``domain``'s component: ``general_share`` general + the rest the
    domain; the general domain's own component is pure general."""
    if domain not in config.data.domain_names:
        raise DemixError(f"'{domain}' is not a domain of this run", f"choose one of {config.data.domain_names}")
    return standard_mixture(domain, config.data.general_domain, config.train.components.general_share)


def mixture_map(config: RunConfig, run: RunDir) -> MixtureMap:
    """Component weights -> data mixture for this run's components: each component's training
    mixture as recorded in its demix.json (demix trained it), declared in
    ``train.components.mixtures`` (trained elsewhere), or, for a component not trained yet, the
    recipe's. A component trained elsewhere with neither is assumed to follow the recipe, with a
    warning: the data mixture demix reports rests on that assumption."""
    check_external_paths(config)
    declared = config.train.components.mixtures
    stray = [d for d in declared if d not in config.train.components.paths]
    if stray:
        raise DemixError(
            f"train.components.mixtures declares the training mixture of {stray}, which demix trains itself "
            "(it records their mixtures in their demix.json)",
            "declare mixtures only for components of train.components.paths",
        )
    mixtures: dict[str, dict[str, float]] = {}
    sources: dict[str, str] = {}
    for d, path in component_dirs(config, run).items():
        recorded = _recorded_mixture(path)
        if d in declared:
            mixtures[d], sources[d] = dict(declared[d]), DECLARED
        elif recorded:
            mixtures[d], sources[d] = recorded, RECORDED
        else:
            mixtures[d] = component_mixture(config, d)
            sources[d] = ASSUMED if d in config.train.components.paths else RECIPE
    assumed = [d for d, src in sources.items() if src == ASSUMED]
    if assumed:
        log.warning(
            "the training mixture of component(s) %s (train.components.paths) is not recorded: assumed %s; declare "
            "it in train.components.mixtures, or the data mixture demix reports may be wrong",
            assumed, {d: mixtures[d] for d in assumed},
        )
    try:
        return MixtureMap.from_mixtures(config.data.domain_names, mixtures, sources)
    except DemixError as exc:
        raise DemixError(f"train.components.mixtures: {exc.what}", exc.fix) from None


def _recorded_mixture(path: Path) -> dict[str, float] | None:
    """The training mixture a component's demix.json records (None without one)."""
    if not is_finished(path):
        return None
    try:
        prov = read_provenance(path)
    except DemixError:
        return None
    if prov.role != "component" or not prov.mixture:
        return None
    return {str(k): float(v) for k, v in prov.mixture.items()}


def reference_recipe(config: RunConfig) -> TrainRecipe:
    """``train.reference`` when the config sets it, else the component budget and recipe."""
    if "reference" in config.train.model_fields_set:
        return config.train.reference
    fields = config.train.components.model_dump(exclude={"general_share", "paths", "mixtures"})
    return TrainRecipe(**fields)


def training_steps(recipe: TrainRecipe, seq_len: int) -> int:
    """Optimizer steps a token budget buys: whole steps of ``batch_size x seq_len`` tokens (a
    budget that is not a multiple is rounded down; 3072 tokens at 8 x 256 is one step)."""
    return recipe.tokens // (recipe.batch_size * seq_len)


def check_trainable(config: RunConfig, domain: str) -> None:
    """Refuse a component this run does not train: an unknown domain, or one whose component
    is external (``train.components.paths``)."""
    component_mixture(config, domain)
    if domain in config.train.components.paths:
        raise DemixError(
            f"the component for '{domain}' is external ({config.train.components.paths[domain]}) and is not trained here",
            f"remove '{domain}' from train.components.paths to train it",
        )


def require_base(config: RunConfig, run: RunDir) -> Path:
    """The base models are trained from: a given ``model.base_path`` holding safetensors, or
    the run's own base, which must be finished."""
    path = base_dir(config, run)
    if config.model.base_path:
        safetensors_files(path, "base")
    elif not is_finished(path):
        raise DemixError(f"the base model at '{path}' is not trained yet", "run `demix train base CONFIG` first")
    return path


def check_external_paths(config: RunConfig) -> None:
    """``train.components.paths`` may only name the run's domains."""
    unknown = [d for d in config.train.components.paths if d not in config.data.domain_names]
    if unknown:
        raise DemixError(
            f"train.components.paths names unknown domain(s) {unknown}", f"use the run's domains {config.data.domain_names}"
        )


def check_given_checkpoints(config: RunConfig, run: RunDir) -> None:
    """The checkpoints a user hands to the run, checked before a verb does any work (every verb
    that uses them calls this first: train base/components/reference/trained-proxy/command,
    merge and search through :func:`demix.merging.builder.run_checkpoints`): ``model.base_path``,
    each ``train.components.paths`` entry and each ``fidelity.references`` path exists, holds
    safetensors only, loads without its own code (unless ``model.trust_remote_code``);
    components and reference models also match the base, when there is one yet. Headers and
    config.json only: no weights are read."""
    check_external_paths(config)
    trust = config.model.trust_remote_code
    base: Layout | None = None
    if config.model.base_path:
        base = _given_checkpoint(config.model.base_path, "model.base_path", "base", trust, "or remove it to pretrain the base in this run")
    elif (run.base / CONFIG_FILE).is_file():  # the run's own base, once it is written
        base = Layout.read(run.base, "base")
    for domain, path in config.train.components.paths.items():
        key = f"train.components.paths.{domain}"
        layout = _given_checkpoint(path, key, f"component '{domain}'", trust, "or remove the entry to train the component here")
        if base is not None:
            check_compatible(base, {domain: layout})
    check_registered_references(config, base)


def check_registered_references(config: RunConfig, base: Layout | None) -> None:
    """``fidelity.references`` and ``fidelity.reference_sets``: each path there, safetensors only, loadable without its own
    code, and (once there is a base) the base's architecture, vocabulary and tensor shapes,
    so that its weights can be compared with the merged proxy's. Headers only."""
    from demix.fidelity.references import registered_references

    trust = config.model.trust_remote_code
    for setting, ref in registered_references(config):
        key = f"{setting}.path" if ref.name is None or setting.endswith("]") else f"{setting} path"
        layout = _given_checkpoint(ref.path, key, "reference model", trust, "or remove the entry to train that reference here")
        if base is not None:
            check_compatible(base, {key: layout}, what="reference model")


def _given_checkpoint(path: str | Path, key: str, role: str, trust_remote_code: bool, or_else: str) -> Layout:
    """One checkpoint a config setting ``key`` names: there, safetensors, loadable; its layout."""
    p = Path(path)
    if not p.is_dir():
        what = "is not a directory" if p.exists() else "does not exist"
        raise DemixError(f"{key} is '{p}', which {what}", f"point {key} to a Hugging Face checkpoint directory, {or_else}")
    who = f"{role} ({key})"
    shard_map(p, who)  # safetensors only: pickled weights are refused before anything reads them
    check_loadable(p, trust_remote_code, who)
    return Layout.read(p, who)


def finished_components(config: RunConfig, run: RunDir) -> dict[str, Path]:
    """Domain -> component directory, in domain order: finished components of this run and the
    external ones of ``train.components.paths`` (checked against the base: architecture,
    vocabulary, tensor names and shapes). Unfinished components are left out."""
    check_external_paths(config)
    out: dict[str, Path] = {}
    base: Layout | None = None
    for d, path in component_dirs(config, run).items():
        if d in config.train.components.paths:
            if not path.is_dir():
                raise DemixError(f"external component '{d}' at '{path}' does not exist", "fix train.components.paths")
            if base is None:
                base = Layout.read(require_base(config, run), "base")
            check_compatible(base, {d: Layout.read(path, f"component '{d}'")})
            out[d] = path
        elif is_finished(path):
            out[d] = path
    return out
