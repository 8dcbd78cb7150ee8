"""What each model of a run is trained on and from, whichever backend trains it: the
components' mixtures, the reference recipe, the steps a budget buys, the base training
continues from, the checkpoints a user hands to the run, and which components are ready to merge.

    component_mixture(config, "math")   # {"general": 0.5, "math": 0.5}
    finished_components(config, run)    # {domain: directory} ready for demix.merging
    check_given_checkpoints(config, run)  # model.base_path, train.components.paths: before any work

Torch-free on import: the command backend (your own trainer) uses these without torch; only
:func:`check_given_checkpoints` asks transformers which model types it knows.
"""

from __future__ import annotations

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
    safetensors_files,
    shard_map,
)
from demix.config import TrainRecipe
from demix.errors import DemixError

if TYPE_CHECKING:
    from demix.config import RunConfig
    from demix.rundir import RunDir


def component_mixture(config: RunConfig, domain: str) -> dict[str, float]:
    """The training mixture of ``domain``'s component: ``general_share`` general + the rest the
    domain; the general domain's own component is pure general."""
    general = config.data.general_domain
    if domain not in config.data.domain_names:
        raise DemixError(f"'{domain}' is not a domain of this run", f"choose one of {config.data.domain_names}")
    if domain == general:
        return {general: 1.0}
    share = config.train.components.general_share
    return {general: share, domain: 1.0 - share} if share > 0 else {domain: 1.0}


def reference_recipe(config: RunConfig) -> TrainRecipe:
    """``train.reference`` when the config sets it, else the component budget and recipe."""
    if "reference" in config.train.model_fields_set:
        return config.train.reference
    fields = config.train.components.model_dump(exclude={"general_share", "paths"})
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
    merge and search through :func:`demix.merging.builder.run_checkpoints`): ``model.base_path`` and
    each ``train.components.paths`` entry exists, holds safetensors only, loads without its
    own code (unless ``model.trust_remote_code``); components also match the base, when there
    is one yet. Headers and config.json only: no weights are read."""
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
