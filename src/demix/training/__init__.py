"""Training: the base, one component per domain, reference models and trained proxies.

All four are one Hugging Face ``Trainer`` recipe on a mixture of the domains' packed train
splits (token shares = mixture weights). Every finished model is a plain HF directory plus
``demix.json`` (its provenance), and is never trained twice.

    from demix.training import train_base, train_components, component_dirs
    train_base(config, run)
    train_components(config, run)
    component_dirs(config, run)   # {domain: directory}, ready for demix.merging
"""

from demix.training.data import MixtureDataset, allocate
from demix.training.model import (
    build_model,
    check_compatible,
    check_vocabulary,
    heldout_loss,
    load_checkpoint,
    load_tokenizer,
    tensor_shapes,
    weights_hash,
)
from demix.training.recipe import (
    TrainResult,
    base_dir,
    component_dirs,
    component_mixture,
    is_finished,
    provenance_summary,
    read_provenance,
    reference_recipe,
    resolve_device,
    train_base,
    train_component,
    train_components,
    train_on_mixture,
)
from demix.training.schedule import lr_multiplier

__all__ = [
    "MixtureDataset",
    "TrainResult",
    "allocate",
    "base_dir",
    "build_model",
    "check_compatible",
    "check_vocabulary",
    "component_dirs",
    "component_mixture",
    "heldout_loss",
    "is_finished",
    "load_checkpoint",
    "load_tokenizer",
    "lr_multiplier",
    "provenance_summary",
    "read_provenance",
    "reference_recipe",
    "resolve_device",
    "tensor_shapes",
    "train_base",
    "train_component",
    "train_components",
    "train_on_mixture",
    "weights_hash",
]
