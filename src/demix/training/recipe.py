"""The training recipe: base, components, reference models and trained proxies, all one
Hugging Face ``Trainer`` run on a mixture of the domains' packed train splits.

Because the loop is ``Trainer``'s, ``accelerate launch`` / ``torchrun`` with DDP, FSDP or
DeepSpeed run it unchanged. demix adds: the mixture dataset, a schedule that honours
``min_lr_ratio``, checkpoints every ``save_every_steps`` in ``<out>/_checkpoints`` that an
interrupted run resumes from, one rich progress bar (those in :mod:`demix.training.trainer`),
and an atomic finish: the final model is written to a hidden sibling directory with its
``demix.json`` and renamed into place, so a directory holding ``demix.json`` is always a
complete model and is never trained again.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback

from demix.checkpoints import (
    Provenance,
    base_hash_of,
    is_finished,
    read_provenance,
    resolve_device,
    weights_hash,
)
from demix.config import RunConfig, TrainRecipe
from demix.errors import DemixError
from demix.mixtures import validate_mixture
from demix.packing import PackedTokens, split_prefix
from demix.rundir import RunDir, read_json, write_json
from demix.tokenizer import load_tokenizer
from demix.training.data import MixtureDataset
from demix.training.model import (
    build_model,
    check_vocabulary,
    checkpoint_dtype,
    heldout_loss,
    load_checkpoint,
)
from demix.training.result import TrainResult
from demix.training.roles import check_given_checkpoints, check_trainable, component_mixture, require_base, training_steps
from demix.training.schedule import warmup_steps
from demix.training.trainer import (
    ADAM_BETA2,
    MAX_GRAD_NORM,
    DemixTrainer,
    ProgressCallback,
    checkpoint_step,
    is_main_process,
    last_complete_checkpoint,
    quiet_transformers,
    training_arguments,
    world_size,
)

log = logging.getLogger("demix.training")

CHECKPOINTS = "_checkpoints"


# --------------------------------------------------------------------------- one training, step by step


def training_dataset(run: RunDir, mixture: Mapping[str, float], recipe: TrainRecipe, seq_len: int) -> MixtureDataset:
    """The windows one training on the data mixture ``mixture`` with ``recipe`` reads, in the
    order Trainer draws them (its sampler is sequential: the order is the dataset's seeded one):
    ``training_steps x batch_size`` windows of ``seq_len`` tokens, each domain's count within one
    window of its token share (:func:`demix.training.data.allocate`)."""
    return MixtureDataset(run.data, mixture, training_steps(recipe, seq_len) * recipe.batch_size, seq_len, recipe.seed)



@dataclass
class _Job:
    """What one training is, as the steps of :func:`_train` share it."""

    role: str
    domain: str | None
    mixture: dict[str, float]
    out_dir: Path
    recipe: TrainRecipe
    init: Path | None
    """The checkpoint training continues from (None: a fresh model)."""
    seq_len: int
    steps: int = 0
    device: str = "cpu"

    @property
    def title(self) -> str:
        return self.role + (f" {self.domain}" if self.domain else "")

    @property
    def tokens_per_step(self) -> int:
        return self.recipe.batch_size * self.seq_len

    @property
    def staging(self) -> Path:
        """The hidden sibling the finished model is written to before it is renamed into place."""
        return self.out_dir.parent / f".{self.out_dir.name}.final"


def _finish_rename(tmp: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` (holding only checkpoints) with the finished ``tmp`` directory."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)


def _already_finished(job: _Job) -> TrainResult | None:
    """The result of a model finished earlier (also one killed between its final write and
    the rename), or None when it must be trained."""
    if is_finished(job.out_dir):
        log.info("%s at %s is finished; not retrained", job.role, job.out_dir)
        return TrainResult(job.out_dir, read_provenance(job.out_dir), skipped=True)
    if is_finished(job.staging):
        _finish_rename(job.staging, job.out_dir)
        return TrainResult(job.out_dir, read_provenance(job.out_dir), skipped=True)
    return None


def _check(job: _Job, train_device: str) -> None:
    """Refuse what cannot train (a budget under one step, a batch that does not split, a
    precision the device lacks) before anything is loaded; set ``job.steps`` and ``job.device``."""
    recipe = job.recipe
    job.steps = training_steps(recipe, job.seq_len)
    if job.steps < 1:
        raise DemixError(
            f"the {job.role} budget of {recipe.tokens} tokens is less than one step of {recipe.batch_size} x {job.seq_len} tokens",
            "raise the token budget or lower batch_size / model.seq_len",
        )
    per_step_parallel = recipe.grad_accumulation * world_size()
    if recipe.batch_size % per_step_parallel:
        raise DemixError(
            f"batch_size {recipe.batch_size} is not divisible by grad_accumulation x processes = {per_step_parallel}",
            "choose a batch_size that is a multiple of grad_accumulation x number of processes",
        )
    device = job.device = resolve_device(train_device, "train.device")
    if recipe.precision == "fp16" and device == "cpu":
        raise DemixError("precision fp16 needs a GPU", "use precision fp32 (or bf16) on CPU")
    if recipe.precision == "bf16" and device.startswith("cuda") and not torch.cuda.is_bf16_supported():
        raise DemixError("this GPU does not support bf16", "use precision fp16 or fp32")
    if device.startswith("cuda:"):
        torch.cuda.set_device(int(device.split(":")[1]))
    if device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _initial_model(config: RunConfig, job: _Job, tokenizer: Any) -> tuple[torch.nn.Module, torch.dtype, str | None]:
    """The model training starts from, the dtype to save it in, and the base hash to record
    (None for a fresh base: its own hash, known once it is written)."""
    if job.init is None:
        return build_model(config.model, tokenizer, job.recipe.seed), torch.float32, None
    check_vocabulary(tokenizer, job.init, "base")
    # fp32 master weights whatever the base's storage dtype; cast back once at the end.
    model = load_checkpoint(job.init, config.model.trust_remote_code, torch.float32)
    return model, checkpoint_dtype(job.init), base_hash_of(job.init)


def _resume_point(job: _Job, base_hash: str | None) -> Path | None:
    """The checkpoint an interrupted training resumes from. Checkpoints made with another
    recipe, mixture or base are discarded (``_checkpoints/recipe.json`` records them)."""
    ckpt_dir = job.out_dir / CHECKPOINTS
    fingerprint = {
        "role": job.role,
        "mixture": dict(job.mixture),
        "recipe": job.recipe.model_dump(mode="json"),
        "seq_len": job.seq_len,
        "init": str(job.init) if job.init else None,
        "base_hash": base_hash,
    }
    fp_path = ckpt_dir / "recipe.json"
    if fp_path.is_file() and read_json(fp_path) != fingerprint:
        log.warning("checkpoints in %s were made with another recipe; starting over", ckpt_dir)
        shutil.rmtree(ckpt_dir)
    if is_main_process():
        write_json(fp_path, fingerprint)
    return last_complete_checkpoint(ckpt_dir)


def _heldout_losses(model: torch.nn.Module, config: RunConfig, run: RunDir, domains: Sequence[str]) -> dict[str, float]:
    """Held-out loss (nats/token) per domain on the first ``train.heldout_tokens`` tokens."""
    out: dict[str, float] = {}
    if config.train.heldout_tokens == 0:
        return out
    for d in domains:
        prefix = split_prefix(run.data, d, "heldout")
        if not PackedTokens.exists(prefix):
            continue
        windows = PackedTokens(prefix).sequences(config.model.seq_len, config.train.heldout_tokens)
        if len(windows):
            out[d] = heldout_loss(model, windows, config.evaluation.batch_size)
    return out


def _schedule_record(job: _Job) -> dict[str, Any]:
    """The recipe as ``demix.json`` records it (with the steps and warmup it came to)."""
    r = job.recipe
    return {
        "lr": r.lr,
        "schedule": r.schedule,
        "warmup_fraction": r.warmup_fraction,
        "warmup_steps": warmup_steps(job.steps, r.warmup_fraction),
        "min_lr_ratio": r.min_lr_ratio,
        "steps": job.steps,
        "batch_size": r.batch_size,
        "grad_accumulation": r.grad_accumulation,
        "seq_len": job.seq_len,
        "weight_decay": r.weight_decay,
        "adam_beta2": ADAM_BETA2,
        "max_grad_norm": MAX_GRAD_NORM,
        "precision": r.precision,
    }


def _save_final(job: _Job, trainer: DemixTrainer, tokenizer: Any, save_dtype: torch.dtype) -> bool:
    """Write the trained model into ``job.staging`` (weights in ``save_dtype``, tokenizer, no
    pickle); returns whether this process is the one that goes on to finish it."""
    if world_size() == 1 and save_dtype != torch.float32:
        assert trainer.model is not None  # DemixTrainer is always given the model
        trainer.model.to(save_dtype)
    if job.staging.exists() and is_main_process():
        shutil.rmtree(job.staging)
    trainer.save_model(str(job.staging))  # FSDP / DeepSpeed aware: gathers the full state dict
    if not trainer.is_world_process_zero():
        return False
    tokenizer.save_pretrained(str(job.staging))
    # Trainer pickles its arguments beside the weights; a finished model carries no pickle.
    (job.staging / "training_args.bin").unlink(missing_ok=True)
    return True


def _train(
    config: RunConfig,
    run: RunDir,
    *,
    role: str,
    mixture: Mapping[str, float],
    out_dir: Path,
    recipe: TrainRecipe,
    init: Path | None,
    domain: str | None = None,
    show_progress: bool = True,
    callbacks: Sequence[TrainerCallback] = (),
) -> TrainResult:
    """The one training function behind every role: checks, the starting model, Trainer,
    then the finished model with its provenance, renamed into ``out_dir``."""
    job = _Job(role, domain, dict(mixture), Path(out_dir), recipe, init, config.model.seq_len)
    with quiet_transformers():
        done = _already_finished(job)
        if done is not None:
            return done
        _check(job, config.train.device)
        tokenizer = load_tokenizer(run.tokenizer)
        dataset = training_dataset(run, job.mixture, recipe, job.seq_len)
        for d, ep in dataset.epochs().items():
            if ep > 1:
                log.warning("%s: domain '%s' is repeated %.1f times (its train split is smaller than its share)", role, d, ep)
        model, save_dtype, base_hash = _initial_model(config, job, tokenizer)

        single_process = world_size() == 1
        before: dict[str, float] = {}
        if single_process:
            model.to(job.device)
            before = _heldout_losses(model, config, run, dataset.domains)
        resume = _resume_point(job, base_hash)

        progress = ProgressCallback(job.title, job.tokens_per_step, show_progress)
        args = training_arguments(recipe, job.steps, job.out_dir / CHECKPOINTS, job.device)
        trainer = DemixTrainer(model=model, args=args, train_dataset=dataset, callbacks=[progress, *callbacks], recipe=recipe)
        trainer.remove_callback(PrinterCallback)  # it prints every log dict; the progress bar replaces it
        log.info("training %s: %d steps x %d tokens -> %s (resume from %s)", job.title, job.steps, job.tokens_per_step, job.out_dir, resume)
        t0 = time.perf_counter()
        try:
            trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        finally:
            progress.close()
        seconds = time.perf_counter() - t0
        assert trainer.model is not None  # DemixTrainer is given the model
        after = _heldout_losses(trainer.model, config, run, dataset.domains) if single_process else {}

        if not _save_final(job, trainer, tokenizer, save_dtype):
            return TrainResult(job.out_dir, None, skipped=False)
        trained_tokens = (trainer.state.global_step - checkpoint_step(resume)) * job.tokens_per_step
        provenance = Provenance(
            role=role,
            domain=domain,
            mixture={d: w for d, w in job.mixture.items() if w > 0},
            base_hash=base_hash or weights_hash(job.staging),
            init="scratch" if init is None else str(init),
            tokens_seen=trainer.state.global_step * job.tokens_per_step,
            seed=recipe.seed,
            schedule=_schedule_record(job),
            details={
                "final_train_loss": progress.last_loss,
                "heldout_loss": {d: {"before": before.get(d), "after": after.get(d)} for d in after} or None,
                "epochs": dataset.epochs(),
                "resumed_from_step": checkpoint_step(resume) or None,
                "train_seconds": round(seconds, 3),
                "tokens_per_second": round(trained_tokens / seconds, 1) if seconds > 0 else None,
                "device": job.device,
            },
        )
        provenance.write(job.staging)
        _finish_rename(job.staging, job.out_dir)  # also removes the intermediate checkpoints
    log.info("finished %s: %d tokens, final train loss %s -> %s", job.title, provenance.tokens_seen, progress.last_loss, job.out_dir)
    return TrainResult(job.out_dir, provenance, skipped=False)


# --------------------------------------------------------------------------- public roles


def train_base(
    config: RunConfig, run: RunDir, *, show_progress: bool = True, callbacks: Sequence[TrainerCallback] = ()
) -> TrainResult:
    """Pretrain the base from scratch on the general domain (``train.base`` recipe), or, when
    ``model.base_path`` is set, check that checkpoint against the run's tokenizer and use it."""
    check_given_checkpoints(config, run)
    if config.model.base_path:
        path = Path(config.model.base_path)
        check_vocabulary(load_tokenizer(run.tokenizer), path, "base")
        return TrainResult(path, read_provenance(path) if is_finished(path) else None, skipped=True)
    return _train(
        config,
        run,
        role="base",
        mixture={config.data.general_domain: 1.0},
        out_dir=run.base,
        recipe=config.train.base,
        init=None,
        show_progress=show_progress,
        callbacks=callbacks,
    )


def train_component(
    config: RunConfig,
    run: RunDir,
    domain: str,
    *,
    show_progress: bool = True,
    callbacks: Sequence[TrainerCallback] = (),
) -> TrainResult:
    """Continue training the base on ``domain`` (plus the general share): the domain's component."""
    check_given_checkpoints(config, run)
    check_trainable(config, domain)
    return _train(
        config,
        run,
        role="component",
        domain=domain,
        mixture=component_mixture(config, domain),
        out_dir=run.component(domain),
        recipe=config.train.components,
        init=require_base(config, run),
        show_progress=show_progress,
        callbacks=callbacks,
    )


def train_on_mixture(
    config: RunConfig,
    run: RunDir,
    mixture: Mapping[str, float],
    out_dir: str | Path,
    recipe: TrainRecipe,
    role: str,
    *,
    show_progress: bool = True,
    callbacks: Sequence[TrainerCallback] = (),
) -> TrainResult:
    """Continue training the base on the data mixture ``mixture`` (token shares) with ``recipe``:
    a reference model (``role="reference"``, recipe ``train.reference``) or a trained proxy, the
    RegMix-style baseline (``role="trained_proxy"``, recipe ``train.trained_proxy``). Its
    demix.json records ``mixture``; the fidelity stage passes the data mixture a merged proxy
    stands for (:mod:`demix.fidelity.references`)."""
    if role not in ("reference", "trained_proxy"):
        raise DemixError(f"role '{role}' cannot be trained on a mixture", "use role 'reference' or 'trained_proxy'")
    check_given_checkpoints(config, run)
    weights = validate_mixture(mixture, config.data.domain_names, normalize=config.merge.normalize)
    return _train(
        config,
        run,
        role=role,
        mixture=weights,
        out_dir=Path(out_dir),
        recipe=recipe,
        init=require_base(config, run),
        show_progress=show_progress,
        callbacks=callbacks,
    )
