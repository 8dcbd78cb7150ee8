"""Who trains a run's components: ``train.backend`` picks demix's Hugging Face Trainer recipe
(``hf``) or your own trainer launched from ``train.command.template`` (``command``). The
pipeline and ``demix train components`` call the one function here.

    train_components(config, run)   # {domain: TrainResult}; finished components are skipped
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from demix.checkpoints import components_to_train
from demix.training.roles import check_given_checkpoints, check_trainable

if TYPE_CHECKING:
    from demix.config import RunConfig
    from demix.rundir import RunDir
    from demix.training.result import TrainResult


def train_components(
    config: RunConfig,
    run: RunDir,
    domains: Sequence[str] | None = None,
    *,
    show_progress: bool = True,
) -> dict[str, TrainResult]:
    """Train the components of ``domains`` (default: every domain not in
    ``train.components.paths``), skipping finished ones, with ``train.backend``: ``hf`` (the
    Trainer recipe, here) or ``command`` (your trainer, see :mod:`demix.training.command`;
    with ``train.command.slurm`` the runs are left to Slurm and this raises until they are
    registered). Returns domain -> result; ``skipped`` is true for those finished before.
    The given checkpoints (``model.base_path``, ``train.components.paths``) are checked first."""
    check_given_checkpoints(config, run)
    todo = components_to_train(config) if domains is None else list(domains)
    for d in todo:  # unknown or external domains fail before any training starts
        check_trainable(config, d)
    if config.train.backend == "command":
        from demix.training.command import train_components_by_command

        return train_components_by_command(config, run, todo)
    from demix.training.recipe import train_component

    return {d: train_component(config, run, d, show_progress=show_progress) for d in todo}
