"""The Hugging Face ``Trainer`` pieces of the recipe: demix's schedule, its optimizer settings,
one progress bar, and resuming from the last checkpoint that finished saving.

Kept apart from :mod:`demix.training.recipe` (what is trained, on which data, and what is
recorded) because these only adapt ``Trainer``: nothing here knows about runs or mixtures.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from demix.checkpoints import INDEX_FILE, SINGLE_FILE
from demix.config import TrainRecipe
from demix.training.schedule import lr_multiplier, warmup_steps

if TYPE_CHECKING:  # pragma: no cover
    from rich.progress import Progress, TaskID

log = logging.getLogger("demix.training")

#: AdamW's second-moment decay: 0.95 is the usual choice for LM pretraining (steadier than 0.999
#: when gradients spike early in training).
ADAM_BETA2 = 0.95
MAX_GRAD_NORM = 1.0


def world_size() -> int:
    """Processes of this training (``WORLD_SIZE`` as torchrun / accelerate set it; 1 alone)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Whether this process is rank 0 (the one that writes shared files)."""
    return int(os.environ.get("RANK", "0")) == 0


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' own tqdm bars (loading / writing shards) inside a training call."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


class DemixTrainer(Trainer):
    """Trainer with demix's schedule (warmup + cosine/linear/constant/wsd down to min_lr_ratio)."""

    def __init__(self, *args: Any, recipe: TrainRecipe, **kwargs: Any) -> None:
        self._recipe = recipe
        super().__init__(*args, **kwargs)

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        if self.lr_scheduler is None:
            r = self._recipe
            f = lr_multiplier(r.schedule, num_training_steps, r.warmup_fraction, r.min_lr_ratio)
            opt = optimizer or self.optimizer
            assert opt is not None  # Trainer creates the optimizer before the scheduler
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(opt, f)
            self._created_lr_scheduler = True
        return self.lr_scheduler


def training_arguments(recipe: TrainRecipe, steps: int, checkpoints: Path, device: str) -> TrainingArguments:
    """Trainer arguments of one training: ``steps`` optimizer steps of ``recipe.batch_size``
    sequences split over gradient accumulation and processes, checkpoints in ``checkpoints``."""
    return TrainingArguments(
        output_dir=str(checkpoints),
        max_steps=steps,
        per_device_train_batch_size=recipe.batch_size // (recipe.grad_accumulation * world_size()),
        gradient_accumulation_steps=recipe.grad_accumulation,
        learning_rate=recipe.lr,
        weight_decay=recipe.weight_decay,
        adam_beta2=ADAM_BETA2,
        max_grad_norm=MAX_GRAD_NORM,
        optim="adamw_torch",
        warmup_steps=warmup_steps(steps, recipe.warmup_fraction),
        logging_strategy="steps",
        logging_steps=max(1, min(50, steps // 20)),
        save_strategy="steps",
        save_steps=recipe.save_every_steps,
        save_total_limit=2,
        seed=recipe.seed,
        bf16=recipe.precision == "bf16",
        fp16=recipe.precision == "fp16",
        use_cpu=device == "cpu",
        train_sampling_strategy="sequential",  # the dataset is already in its seeded mixture order
        dataloader_num_workers=0,
        remove_unused_columns=False,
        report_to="none",
        disable_tqdm=True,
        log_level="warning",
    )


class ProgressCallback(TrainerCallback):
    """One rich progress bar per training (steps, tokens/s, loss, ETA); remembers the last loss."""

    def __init__(self, title: str, tokens_per_step: int, show: bool) -> None:
        self.title = title
        self.tokens_per_step = tokens_per_step
        self.show = show
        self.last_loss: float | None = None
        self.start_step = 0
        self.steps_done = 0
        self._t0 = 0.0
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_step = state.global_step
        self._t0 = time.perf_counter()
        if self.show and state.is_world_process_zero:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("steps  {task.fields[tok_s]} tok/s  loss {task.fields[loss]}"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._progress.start()
            self._task = self._progress.add_task(
                self.title, total=state.max_steps, completed=state.global_step, tok_s="-", loss="-"
            )

    def on_step_end(self, args, state, control, **kwargs):
        self.steps_done = state.global_step - self.start_step
        if self._progress is not None and self._task is not None:
            elapsed = max(time.perf_counter() - self._t0, 1e-9)
            tok_s = self.steps_done * self.tokens_per_step / elapsed
            self._progress.update(self._task, completed=state.global_step, tok_s=f"{tok_s:,.0f}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.last_loss = float(logs["loss"])
            if self._progress is not None and self._task is not None:
                self._progress.update(self._task, loss=f"{self.last_loss:.3f}")

    def on_train_end(self, args, state, control, **kwargs):
        self.close()

    def close(self) -> None:
        """Stop the bar (also after an exception, so the terminal is left clean)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self._t0


def last_complete_checkpoint(checkpoints: Path) -> Path | None:
    """The newest ``checkpoint-N`` in ``checkpoints`` that finished saving (Trainer writes
    trainer_state.json last); newer, half-written ones (a crash during a save) are deleted."""
    if not checkpoints.is_dir():
        return None
    found = []
    for p in checkpoints.glob("checkpoint-*"):
        try:
            found.append((int(p.name.split("-")[-1]), p))
        except ValueError:
            continue
    for _, p in sorted(found, reverse=True):
        has_weights = (p / SINGLE_FILE).is_file() or (p / INDEX_FILE).is_file()
        if has_weights and (p / "trainer_state.json").is_file():
            return p
        log.warning("removing incomplete checkpoint %s", p)
        shutil.rmtree(p, ignore_errors=True)
    return None


def checkpoint_step(checkpoint: Path | None) -> int:
    """The step a ``checkpoint-N`` directory was saved at (0 for None: training from the start)."""
    return int(checkpoint.name.split("-")[-1]) if checkpoint else 0
