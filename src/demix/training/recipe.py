"""The training recipe: base, components, reference models and trained proxies, all one
Hugging Face ``Trainer`` run on a mixture of the domains' packed train splits.

Because the loop is ``Trainer``'s, ``accelerate launch`` / ``torchrun`` with DDP, FSDP or
DeepSpeed run it unchanged. demix adds: the mixture dataset, a schedule that honours
``min_lr_ratio``, checkpoints every ``save_every_steps`` in ``<out>/_checkpoints`` that an
interrupted run resumes from, one rich progress bar, and an atomic finish: the final model is
written to a hidden sibling directory with its ``demix.json`` and renamed into place, so a
directory holding ``demix.json`` is always a complete model and is never trained again.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback

import demix
from demix.config import RunConfig, TrainRecipe
from demix.errors import DemixError
from demix.mixtures import validate_mixture
from demix.packing import PackedTokens, split_prefix
from demix.rundir import RunDir, read_json, write_json
from demix.training.data import MixtureDataset
from demix.training.model import (
    build_model,
    check_compatible,
    check_vocabulary,
    checkpoint_dtype,
    heldout_loss,
    load_checkpoint,
    load_tokenizer,
    safetensors_files,
    weights_hash,
)
from demix.training.schedule import lr_multiplier, warmup_steps

log = logging.getLogger("demix.training")

PROVENANCE = "demix.json"
CHECKPOINTS = "_checkpoints"
ROLES = ("base", "component", "reference", "trained_proxy")
#: AdamW's second-moment decay: 0.95 is the usual choice for LM pretraining (steadier than 0.999
#: when gradients spike early in training).
ADAM_BETA2 = 0.95
MAX_GRAD_NORM = 1.0


@dataclass
class TrainResult:
    """Outcome of one training call."""

    path: Path
    """The finished model directory."""

    provenance: dict[str, Any]
    """Its ``demix.json`` (empty for an external checkpoint without one)."""

    skipped: bool
    """True when the model was already finished (or external) and nothing was trained."""


# --------------------------------------------------------------------------- small helpers


def read_provenance(path: str | Path) -> dict[str, Any]:
    """The ``demix.json`` of a model directory demix wrote."""
    p = Path(path) / PROVENANCE
    if not p.is_file():
        raise DemixError(f"'{path}' has no {PROVENANCE}: it is not a finished demix model", "train it with `demix train`")
    return read_json(p)


def is_finished(path: str | Path) -> bool:
    """A model directory is finished when its ``demix.json`` exists (it is written last)."""
    return (Path(path) / PROVENANCE).is_file()


def resolve_device(spec: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; other values are checked."""
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise DemixError(f"train.device is '{spec}' but no CUDA device is visible", "set train.device=cpu (or auto)")
    if spec != "cpu" and not spec.startswith("cuda"):
        raise DemixError(f"train.device '{spec}' is not supported", "use auto, cpu, cuda or cuda:N")
    return spec


def base_dir(config: RunConfig, run: RunDir) -> Path:
    """Where the base lives: ``model.base_path`` when given, else the run's ``models/base``."""
    return Path(config.model.base_path) if config.model.base_path else run.base


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


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


# --------------------------------------------------------------------------- Trainer pieces


class _DemixTrainer(Trainer):
    """Trainer with demix's schedule (warmup + cosine/linear/constant/wsd down to min_lr_ratio)."""

    def __init__(self, *args: Any, recipe: TrainRecipe, **kwargs: Any) -> None:
        self._recipe = recipe
        super().__init__(*args, **kwargs)

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        if self.lr_scheduler is None:
            r = self._recipe
            f = lr_multiplier(r.schedule, num_training_steps, r.warmup_fraction, r.min_lr_ratio)
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, f)
            self._created_lr_scheduler = True
        return self.lr_scheduler


class _ProgressCallback(TrainerCallback):
    """One rich progress bar per training (steps, tokens/s, loss, ETA); remembers the last loss."""

    def __init__(self, title: str, tokens_per_step: int, show: bool) -> None:
        self.title = title
        self.tokens_per_step = tokens_per_step
        self.show = show
        self.last_loss: float | None = None
        self.start_step = 0
        self.steps_done = 0
        self._t0 = 0.0
        self._progress = None
        self._task = None

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
        if self._progress is not None:
            elapsed = max(time.perf_counter() - self._t0, 1e-9)
            tok_s = self.steps_done * self.tokens_per_step / elapsed
            self._progress.update(self._task, completed=state.global_step, tok_s=f"{tok_s:,.0f}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.last_loss = float(logs["loss"])
            if self._progress is not None:
                self._progress.update(self._task, loss=f"{self.last_loss:.3f}")

    def on_train_end(self, args, state, control, **kwargs):
        self.close()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self._t0


def _last_complete_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest ``checkpoint-N`` that finished saving (Trainer writes trainer_state.json last);
    newer, half-written ones (a crash during a save) are deleted."""
    if not ckpt_dir.is_dir():
        return None
    found = []
    for p in ckpt_dir.glob("checkpoint-*"):
        try:
            found.append((int(p.name.split("-")[-1]), p))
        except ValueError:
            continue
    for _, p in sorted(found, reverse=True):
        has_weights = (p / "model.safetensors").is_file() or (p / "model.safetensors.index.json").is_file()
        if has_weights and (p / "trainer_state.json").is_file():
            return p
        log.warning("removing incomplete checkpoint %s", p)
        shutil.rmtree(p, ignore_errors=True)
    return None


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


def _finish_rename(tmp: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` (holding only checkpoints) with the finished ``tmp`` directory."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)


# --------------------------------------------------------------------------- the one training function


@contextmanager
def quiet_transformers():
    """Silence transformers' own tqdm bars (loading / writing shards) inside a training call."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _train(*args: Any, **kwargs: Any) -> TrainResult:
    with quiet_transformers():
        return _train_quietly(*args, **kwargs)


def _train_quietly(
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
    out_dir = Path(out_dir)
    if is_finished(out_dir):
        log.info("%s at %s is finished; not retrained", role, out_dir)
        return TrainResult(out_dir, read_provenance(out_dir), skipped=True)
    tmp_final = out_dir.parent / f".{out_dir.name}.final"
    if is_finished(tmp_final):  # a crash between writing the model and renaming it
        _finish_rename(tmp_final, out_dir)
        return TrainResult(out_dir, read_provenance(out_dir), skipped=True)

    seq_len = config.model.seq_len
    tokens_per_step = recipe.batch_size * seq_len
    steps = training_steps(recipe, seq_len)
    if steps < 1:
        raise DemixError(
            f"the {role} budget of {recipe.tokens} tokens is less than one step of {recipe.batch_size} x {seq_len} tokens",
            "raise the token budget or lower batch_size / model.seq_len",
        )
    per_step_parallel = recipe.grad_accumulation * _world_size()
    if recipe.batch_size % per_step_parallel:
        raise DemixError(
            f"batch_size {recipe.batch_size} is not divisible by grad_accumulation x processes = {per_step_parallel}",
            "choose a batch_size that is a multiple of grad_accumulation x number of processes",
        )
    device = resolve_device(config.train.device)
    if recipe.precision == "fp16" and device == "cpu":
        raise DemixError("precision fp16 needs a GPU", "use precision fp32 (or bf16) on CPU")
    if recipe.precision == "bf16" and device.startswith("cuda") and not torch.cuda.is_bf16_supported():
        raise DemixError("this GPU does not support bf16", "use precision fp16 or fp32")
    if device.startswith("cuda:"):
        torch.cuda.set_device(int(device.split(":")[1]))
    if device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)

    tokenizer = load_tokenizer(run)
    dataset = MixtureDataset(run.data, mixture, steps * recipe.batch_size, seq_len, recipe.seed)
    for d, ep in dataset.epochs().items():
        if ep > 1:
            log.warning("%s: domain '%s' is repeated %.1f times (its train split is smaller than its share)", role, d, ep)

    if init is None:
        model = build_model(config.model, tokenizer, recipe.seed)
        save_dtype = torch.float32
        base_hash = None  # the base's own hash, computed once written
    else:
        check_vocabulary(tokenizer, init, "base")
        save_dtype = checkpoint_dtype(init)
        # fp32 master weights whatever the base's storage dtype; cast back once at the end.
        model = load_checkpoint(init, config.model.trust_remote_code, torch.float32)
        base_hash = read_provenance(init).get("base_hash") if is_finished(init) else weights_hash(init)

    single_process = _world_size() == 1
    eval_domains = list(dataset.domains)
    before: dict[str, float] = {}
    if single_process:
        model.to(device)
        before = _heldout_losses(model, config, run, eval_domains)

    ckpt_dir = out_dir / CHECKPOINTS
    fingerprint = {
        "role": role,
        "mixture": dict(mixture),
        "recipe": recipe.model_dump(mode="json"),
        "seq_len": seq_len,
        "init": str(init) if init else None,
        "base_hash": base_hash,
    }
    fp_path = ckpt_dir / "recipe.json"
    if fp_path.is_file() and read_json(fp_path) != fingerprint:
        log.warning("checkpoints in %s were made with another recipe; starting over", ckpt_dir)
        shutil.rmtree(ckpt_dir)
    if _is_main_process():
        write_json(fp_path, fingerprint)
    resume = _last_complete_checkpoint(ckpt_dir)

    args = TrainingArguments(
        output_dir=str(ckpt_dir),
        max_steps=steps,
        per_device_train_batch_size=recipe.batch_size // per_step_parallel,
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
    title = f"{role}" + (f" {domain}" if domain else "")
    progress = _ProgressCallback(title, tokens_per_step, show_progress)
    trainer = _DemixTrainer(
        model=model, args=args, train_dataset=dataset, callbacks=[progress, *callbacks], recipe=recipe
    )
    trainer.remove_callback(PrinterCallback)  # it prints every log dict; the progress bar replaces it

    log.info("training %s: %d steps x %d tokens -> %s (resume from %s)", title, steps, tokens_per_step, out_dir, resume)
    t0 = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    finally:
        progress.close()
    seconds = time.perf_counter() - t0
    resumed_step = int(resume.name.split("-")[-1]) if resume else 0

    after: dict[str, float] = {}
    if single_process:
        after = _heldout_losses(trainer.model, config, run, eval_domains)

    if single_process and save_dtype != torch.float32:
        trainer.model.to(save_dtype)
    if tmp_final.exists() and _is_main_process():
        shutil.rmtree(tmp_final)
    trainer.save_model(str(tmp_final))  # FSDP / DeepSpeed aware: gathers the full state dict
    if not trainer.is_world_process_zero():
        return TrainResult(out_dir, {}, skipped=False)
    tokenizer.save_pretrained(str(tmp_final))
    # Trainer pickles its arguments beside the weights; a finished model carries no pickle.
    (tmp_final / "training_args.bin").unlink(missing_ok=True)
    if base_hash is None:
        base_hash = weights_hash(tmp_final)
    trained_steps = trainer.state.global_step - resumed_step
    provenance: dict[str, Any] = {
        "role": role,
        "domain": domain,
        "mixture": {d: w for d, w in mixture.items() if w > 0},
        "base_hash": base_hash,
        "init": "scratch" if init is None else str(init),
        "tokens_seen": trainer.state.global_step * tokens_per_step,
        "schedule": {
            "lr": recipe.lr,
            "schedule": recipe.schedule,
            "warmup_fraction": recipe.warmup_fraction,
            "warmup_steps": warmup_steps(steps, recipe.warmup_fraction),
            "min_lr_ratio": recipe.min_lr_ratio,
            "steps": steps,
            "batch_size": recipe.batch_size,
            "grad_accumulation": recipe.grad_accumulation,
            "seq_len": seq_len,
            "weight_decay": recipe.weight_decay,
            "adam_beta2": ADAM_BETA2,
            "max_grad_norm": MAX_GRAD_NORM,
            "precision": recipe.precision,
        },
        "seed": recipe.seed,
        "final_train_loss": progress.last_loss,
        "heldout_loss": {d: {"before": before.get(d), "after": after.get(d)} for d in after} or None,
        "epochs": dataset.epochs(),
        "resumed_from_step": resumed_step or None,
        "train_seconds": round(seconds, 3),
        "tokens_per_second": round(trained_steps * tokens_per_step / seconds, 1) if seconds > 0 else None,
        "device": device,
        "demix_version": demix.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(tmp_final / PROVENANCE, provenance)
    _finish_rename(tmp_final, out_dir)  # also removes the intermediate checkpoints
    log.info(
        "finished %s: %d tokens, final train loss %s -> %s", title, provenance["tokens_seen"], progress.last_loss, out_dir
    )
    return TrainResult(out_dir, provenance, skipped=False)


# --------------------------------------------------------------------------- public roles


def train_base(
    config: RunConfig, run: RunDir, *, show_progress: bool = True, callbacks: Sequence[TrainerCallback] = ()
) -> TrainResult:
    """Pretrain the base from scratch on the general domain (``train.base`` recipe), or, when
    ``model.base_path`` is set, check that checkpoint against the run's tokenizer and use it."""
    if config.model.base_path:
        path = Path(config.model.base_path)
        safetensors_files(path)
        check_vocabulary(load_tokenizer(run), path, "base")
        return TrainResult(path, read_provenance(path) if is_finished(path) else {}, skipped=True)
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


def _require_base(config: RunConfig, run: RunDir) -> Path:
    path = base_dir(config, run)
    if config.model.base_path:
        safetensors_files(path)
    elif not is_finished(path):
        raise DemixError(f"the base model at '{path}' is not trained yet", "run `demix train base CONFIG` first")
    return path


def train_component(
    config: RunConfig,
    run: RunDir,
    domain: str,
    *,
    show_progress: bool = True,
    callbacks: Sequence[TrainerCallback] = (),
) -> TrainResult:
    """Continue training the base on ``domain`` (plus the general share): the domain's component."""
    if domain in config.train.components.paths:
        raise DemixError(
            f"the component for '{domain}' is external ({config.train.components.paths[domain]}) and is not trained here",
            f"remove '{domain}' from train.components.paths to train it",
        )
    mixture = component_mixture(config, domain)
    return _train(
        config,
        run,
        role="component",
        domain=domain,
        mixture=mixture,
        out_dir=run.component(domain),
        recipe=config.train.components,
        init=_require_base(config, run),
        show_progress=show_progress,
        callbacks=callbacks,
    )


def _check_external_paths(config: RunConfig) -> None:
    unknown = [d for d in config.train.components.paths if d not in config.data.domain_names]
    if unknown:
        raise DemixError(
            f"train.components.paths names unknown domain(s) {unknown}", f"use the run's domains {config.data.domain_names}"
        )


def train_components(
    config: RunConfig,
    run: RunDir,
    domains: Sequence[str] | None = None,
    *,
    show_progress: bool = True,
) -> dict[str, TrainResult]:
    """Train the components of ``domains`` (default: every domain not in ``train.components.paths``),
    skipping finished ones."""
    _check_external_paths(config)
    if domains is None:
        domains = [d for d in config.data.domain_names if d not in config.train.components.paths]
    for d in domains:
        component_mixture(config, d)  # unknown domains fail before any training starts
    return {d: train_component(config, run, d, show_progress=show_progress) for d in domains}


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
    """Continue training the base on ``mixture`` with ``recipe``: a reference model
    (``role="reference"``, recipe ``train.reference``) or a trained proxy, the RegMix-style
    baseline (``role="trained_proxy"``, recipe ``train.trained_proxy``)."""
    if role not in ("reference", "trained_proxy"):
        raise DemixError(f"role '{role}' cannot be trained on a mixture", "use role 'reference' or 'trained_proxy'")
    weights = validate_mixture(mixture, config.data.domain_names, normalize=config.merge.normalize)
    return _train(
        config,
        run,
        role=role,
        mixture=weights,
        out_dir=Path(out_dir),
        recipe=recipe,
        init=_require_base(config, run),
        show_progress=show_progress,
        callbacks=callbacks,
    )


def component_dirs(config: RunConfig, run: RunDir) -> dict[str, Path]:
    """Domain -> component directory, in domain order: finished components of this run and the
    external ones of ``train.components.paths`` (checked against the base)."""
    _check_external_paths(config)
    out: dict[str, Path] = {}
    for d in config.data.domain_names:
        if d in config.train.components.paths:
            path = Path(config.train.components.paths[d])
            if not path.is_dir():
                raise DemixError(f"external component '{d}' at '{path}' does not exist", "fix train.components.paths")
            base = _require_base(config, run)
            check_compatible(base, path, f"component '{d}'")
            out[d] = path
        elif is_finished(run.component(d)):
            out[d] = run.component(d)
    return out


def provenance_summary(result: TrainResult) -> str:
    """One line for the CLI: tokens, steps, final loss, held-out loss change, where written."""
    p = result.provenance
    if not p:
        return f"{result.path} (external checkpoint)"
    held = p.get("heldout_loss") or {}
    held_txt = ", ".join(
        f"{d} {v['before']:.3f}->{v['after']:.3f}" for d, v in held.items() if v.get("before") is not None
    )
    loss = p.get("final_train_loss")
    text = f"{p.get('tokens_seen', 0):,} tokens, {p['schedule']['steps']} steps, final train loss "
    text += f"{loss:.3f}" if loss is not None else "n/a"
    if held_txt:
        text += f", held-out loss {held_txt}"
    text += f" -> {result.path}"
    return text + (" (already done)" if result.skipped else "")
