"""Training: the base, one component per domain, reference models and trained proxies.

With ``train.backend: hf`` all four are one Hugging Face ``Trainer`` recipe on a mixture of the
domains' packed train splits (token shares = mixture weights); with ``command`` your own
trainer trains the components and reference models (:mod:`demix.training.command`). Every
finished model is a plain HF directory plus ``demix.json`` (its provenance, see
:mod:`demix.checkpoints`), and is never trained twice.

    from demix.training import finished_components, train_base, train_components
    train_base(config, run)
    train_components(config, run)          # with train.backend
    finished_components(config, run)       # {domain: directory}, ready for demix.merging

Names are imported on first use, so ``import demix.training`` costs no torch.
"""

from __future__ import annotations

from typing import Any

from demix._lazy import lazy_attribute

_LAZY = {
    "MixtureDataset": "demix.training.data",
    "allocate": "demix.training.data",
    "build_model": "demix.training.model",
    "check_vocabulary": "demix.training.model",
    "heldout_loss": "demix.training.model",
    "load_checkpoint": "demix.training.model",
    "TrainResult": "demix.training.result",
    "provenance_summary": "demix.training.result",
    "component_mixture": "demix.training.roles",
    "finished_components": "demix.training.roles",
    "reference_recipe": "demix.training.roles",
    "training_steps": "demix.training.roles",
    "train_base": "demix.training.recipe",
    "train_component": "demix.training.recipe",
    "train_on_mixture": "demix.training.recipe",
    "train_components": "demix.training.backends",
    "quiet_transformers": "demix.training.trainer",
    "lr_multiplier": "demix.training.schedule",
}


def __getattr__(name: str) -> Any:
    return lazy_attribute(__name__, _LAZY, name)


__all__ = sorted(_LAZY)
