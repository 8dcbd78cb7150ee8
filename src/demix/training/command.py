"""The `command` trainer backend: components and reference models trained by your own trainer.

For each run (one component per domain, one reference model per mixture) demix renders

- the data-mixture file in your trainer's format (the exporters of ``demix export``: Megatron,
  Megatron-Bridge, NeMo, nanotron, OLMo-core, HF datasets, MosaicML, litdata, torchtitan, JSON),
  with the token budget of the run: the
  run's training mixture, token shares of its training data (a component: ``general_share``
  general + its domain; a reference model: its data mixture);
- your launch command, from ``train.command.template`` with placeholders filled in;
- optionally one Slurm array script with one array task per run;

then runs the commands one after the other here (or leaves them to Slurm), converts non-HF
outputs with ``train.command.converter``, and *registers* each finished checkpoint: checks it
is a HF safetensors checkpoint compatible with the base and writes its ``demix.json``, so the
merging stage finds it like a component trained by the HF recipe.

    plan = plan_command_runs(config, run, roles=("component",))
    write_plan(config, run, plan)                # <run>/train_commands/...
    execute_plan(config, run, plan)              # run, convert, register (skips finished ones)
    register_finished(config, run, plan)         # after Slurm: register what exists

``train.backend: command`` makes :func:`demix.training.train_components` (``demix run``,
``demix train components``) use this backend through :func:`train_components_by_command`.
"""

from __future__ import annotations

import json
import logging
import shlex
import string
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from demix.checkpoints import (
    CONFIG_FILE,
    Layout,
    Provenance,
    base_dir,
    base_hash_of,
    check_compatible,
    components_to_train,
    is_finished,
    read_provenance,
    safetensors_files,
)
from demix.config import RunConfig, TrainRecipe
from demix.errors import DemixError
from demix.mixtures import mixture_key, validate_mixture
from demix.rundir import RunDir, atomic_write_text, write_json
from demix.training.roles import component_mixture, reference_recipe

if TYPE_CHECKING:
    from demix.search.files import BestMixture
    from demix.training.result import TrainResult

log = logging.getLogger("demix.training.command")

PLACEHOLDERS = (
    "data_mixture_file", "output_dir", "tokens", "seed", "domain", "role", "name", "init",
    "lr", "batch_size", "seq_len", "run_dir",
)
CONVERTER_PLACEHOLDERS = ("output_dir", "hf_dir")
ROLES = ("component", "reference")


@dataclass(frozen=True)
class CommandRun:
    """One training run of the command backend, fully rendered."""

    name: str
    """Unique name: ``component-<domain>`` or ``reference-<mixture key>``."""
    role: str
    domain: str | None
    mixture: dict[str, float]
    tokens: int
    seed: int
    init: str
    """The base checkpoint the run continues from."""
    output_dir: str
    """Where the trainer writes (the HF directory itself when there is no converter)."""
    hf_dir: str
    """Where demix expects the finished HF checkpoint (``models/components/<domain>`` ...)."""
    mixture_file: str
    command: str
    converter: str | None


def _fill(template: str, values: Mapping[str, Any], allowed: Sequence[str], what: str) -> str:
    """``template`` with ``{name}`` placeholders replaced; unknown names are a DemixError."""
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise DemixError(
            f"{what} '{template}' is not a valid template ({exc})", "write placeholders as {name}; double braces {{ }} for literal ones"
        ) from None
    unknown = sorted(n for n in names if n not in allowed)
    if unknown:
        raise DemixError(f"{what} uses unknown placeholder(s) {unknown}", f"use only {{{'}, {'.join(allowed)}}}")
    return template.format_map({k: values[k] for k in names})


def _recipe(config: RunConfig, role: str) -> TrainRecipe:
    return config.train.components if role == "component" else reference_recipe(config)


def _mixture_document(config: RunConfig, run: RunDir, mixture: Mapping[str, float], tokens: int) -> BestMixture:
    """The ``best_mixture.json`` record the exporters render for one run: its training mixture
    as the data mixture (a component's ``general_share`` general + its domain, a reference
    model's mixture: token shares of its training data, never component weights), the budget,
    and epochs of that data mixture (and mean document lengths) when the packed data says how
    big each domain is."""
    from demix.search.files import DATA_MIXTURE_UNIT, BestMixture

    domains = config.data.domain_names
    data = {d: float(mixture.get(d, 0.0)) for d in domains}
    doc = BestMixture(data_mixture=data, unit=DATA_MIXTURE_UNIT, target_tokens=int(tokens))
    counts, docs = {}, {}
    for d in domains:
        meta = run.split_meta(d)
        if meta.is_file():
            m = json.loads(meta.read_text())
            counts[d], docs[d] = int(m["tokens"]), int(m.get("documents", 0))
    if len(counts) == len(domains):
        doc.epochs = {d: (data[d] * tokens / counts[d]) if counts[d] else None for d in domains}
        if all(docs.values()):
            doc.mean_document_tokens = {d: counts[d] / docs[d] for d in domains}
    return doc


def plan_command_runs(
    config: RunConfig,
    run: RunDir,
    roles: Sequence[str] = ("component",),
    mixtures: Sequence[Mapping[str, float]] = (),
    domains: Sequence[str] | None = None,
) -> list[CommandRun]:
    """Render every run: components of ``domains`` (default: all not in ``train.components.paths``)
    when ``"component"`` is in ``roles``, and one reference model per mixture of ``mixtures``."""
    from demix.exporters import get_exporter

    cmd = config.train.command
    if not cmd.template:
        raise DemixError(
            "train.command.template is not set",
            "set it to your trainer's launch command, e.g. 'torchrun ... pretrain_gpt.py --data-args-path {data_mixture_file} "
            "--save {output_dir}'",
        )
    unknown_roles = [r for r in roles if r not in ROLES]
    if unknown_roles:
        raise DemixError(f"unknown role(s) {unknown_roles} for the command backend", f"use {', '.join(ROLES)}")
    exporter = get_exporter(cmd.format)
    bad = [d for d in cmd.data_prefixes if d not in config.data.domain_names]
    if bad:
        raise DemixError(f"train.command.data_prefixes names unknown domain(s) {bad}", f"use the run's domains {config.data.domain_names}")
    init = str(Path(base_dir(config, run)).resolve())
    # Commands run elsewhere (Slurm nodes, another cwd): every path in them is absolute.
    absolute = RunDir(run.root.resolve())
    wanted: list[tuple[str, str | None, dict[str, float], Path]] = []
    if "component" in roles:
        for d in domains if domains is not None else components_to_train(config):
            wanted.append(("component", d, component_mixture(config, d), run.component(d)))
    if "reference" in roles or mixtures:
        for m in mixtures:
            w = validate_mixture(m, config.data.domain_names, normalize=config.merge.normalize)
            wanted.append(("reference", None, w, run.reference(mixture_key(w))))
    plans = []
    for role, domain, mixture, hf_dir in wanted:
        recipe = _recipe(config, role)
        name = f"component-{domain}" if role == "component" else f"reference-{mixture_key(mixture)}"
        hf_dir = Path(hf_dir).resolve()
        output_dir = (absolute.trainer_outputs / name) if cmd.converter else hf_dir
        mixture_file = absolute.train_commands / f"{name}{exporter.suffix}"
        values = {
            "data_mixture_file": shlex.quote(str(mixture_file)),
            "output_dir": shlex.quote(str(output_dir)),
            "tokens": recipe.tokens,
            "seed": recipe.seed,
            "domain": domain or "",
            "role": role,
            "name": name,
            "init": shlex.quote(init),
            "lr": recipe.lr,
            "batch_size": recipe.batch_size,
            "seq_len": config.model.seq_len,
            "run_dir": shlex.quote(str(absolute.root)),
        }
        command = _fill(cmd.template, values, PLACEHOLDERS, "train.command.template")
        converter = None
        if cmd.converter:
            converter = _fill(
                cmd.converter,
                {"output_dir": shlex.quote(str(output_dir)), "hf_dir": shlex.quote(str(hf_dir))},
                CONVERTER_PLACEHOLDERS,
                "train.command.converter",
            )
        plans.append(
            CommandRun(
                name, role, domain, dict(mixture), recipe.tokens, recipe.seed, init,
                str(output_dir), str(hf_dir), str(mixture_file), command, converter,
            )
        )
    _check_data_paths(config, [p.mixture for p in plans])
    return plans


def _check_data_paths(config: RunConfig, mixtures: Sequence[Mapping[str, float]]) -> None:
    """Every domain a planned run trains on has a path in ``train.command.data_prefixes``
    (formats that write paths), before any command is launched."""
    cmd = config.train.command
    if cmd.allow_placeholder_paths or cmd.format == "json":
        return
    used = [d for d in config.data.domain_names if any(m.get(d, 0.0) > 0 for m in mixtures)]
    missing = [d for d in used if d not in cmd.data_prefixes]
    if missing:
        example = ", ".join(f"{d}: /data/{d}_text_document" for d in missing[:2])
        raise DemixError(
            f"train.command.data_prefixes has no data path for domain(s) {', '.join(missing)}: the {cmd.format} "
            "file of each run would name the domain as its path and the trainer would fail much later",
            f"set train.command.data_prefixes (e.g. {{{example}}}), or train.command.allow_placeholder_paths: true "
            "to write the names for your command to map",
        )


def render_mixture_file(config: RunConfig, run: RunDir, plan: CommandRun) -> str:
    """The data-mixture file of one run in ``train.command.format``."""
    from demix.exporters import ExportOptions, get_exporter

    doc = _mixture_document(config, run, plan.mixture, plan.tokens)
    recipe = _recipe(config, plan.role)
    seq = config.model.seq_len
    # The run's own sequence length, global batch (in tokens: batch_size counts the accumulated
    # sequences) and seed, so formats that need them (OLMo-core's global_batch_size, MosaicML's
    # epoch_size) are loadable by the trainer. Missing paths were refused at planning unless
    # allowed (_check_data_paths).
    options = ExportOptions(seq_length=seq, global_batch_tokens=recipe.batch_size * seq, seed=plan.seed,
                            allow_placeholder_paths=config.train.command.allow_placeholder_paths,
                            require_settings=True)
    return get_exporter(config.train.command.format).render(doc, config.train.command.data_prefixes, options=options)


def render_slurm_array(config: RunConfig, run: RunDir, plans: Sequence[CommandRun]) -> str:
    """A Slurm array script: task i runs plan i's command (and converter)."""
    absolute = RunDir(run.root.resolve())
    lines = [
        "#!/usr/bin/env bash",
        f"#SBATCH --job-name=demix-{config.name}",
        f"#SBATCH --array=0-{len(plans) - 1}",
        f"#SBATCH --output={absolute.logs}/slurm-%A_%a.out",
        *[f"#SBATCH {opt}" for opt in config.train.command.slurm_options],
        "# Written by `demix train command`; after the jobs finish, register the checkpoints with",
        f"#   demix train command {absolute.config} --register",
        "set -euo pipefail",
        "case \"$SLURM_ARRAY_TASK_ID\" in",
    ]
    for i, p in enumerate(plans):
        body = p.command + (f" && {p.converter}" if p.converter else "")
        lines += [f"  {i})  # {p.name}", f"    {body}", "    ;;"]
    lines += ["  *) echo \"no run for array task $SLURM_ARRAY_TASK_ID\" >&2; exit 1 ;;", "esac", ""]
    return "\n".join(lines)


def write_plan(config: RunConfig, run: RunDir, plans: Sequence[CommandRun]) -> Path:
    """Write every mixture file, ``commands.sh``, ``plan.json`` (and ``slurm_array.sh`` when
    ``train.command.slurm``) under ``<run>/train_commands``; returns that directory."""
    out = run.train_commands
    for p in plans:
        atomic_write_text(Path(p.mixture_file), render_mixture_file(config, run, p))
    script = ["#!/usr/bin/env bash", "# Written by `demix train command`: one trainer run per line.", "set -euo pipefail"]
    for p in plans:
        script += [f"# {p.name}", p.command + (f" && {p.converter}" if p.converter else "")]
    atomic_write_text(out / "commands.sh", "\n".join(script) + "\n")
    write_json(out / "plan.json", [asdict(p) for p in plans])
    if config.train.command.slurm and plans:
        atomic_write_text(out / "slurm_array.sh", render_slurm_array(config, run, plans))
    return out


def register_checkpoint(config: RunConfig, run: RunDir, plan: CommandRun) -> Provenance:
    """Check that ``plan.hf_dir`` holds a HF safetensors checkpoint that merges with the base and
    write its ``demix.json``; returns the provenance."""
    hf = Path(plan.hf_dir)
    if is_finished(hf):
        return read_provenance(hf)
    if not (hf / CONFIG_FILE).is_file():
        raise DemixError(
            f"run {plan.name} left no HF checkpoint at '{hf}' (no config.json)",
            "make the trainer save HF safetensors there, or set train.command.converter to convert its output",
        )
    who = plan.domain or plan.name
    safetensors_files(hf, f"{plan.role} '{who}'")
    check_compatible(Layout.read(plan.init, "base"), {who: Layout.read(hf, f"{plan.role} '{who}'")}, plan.role)
    provenance = Provenance(
        role=plan.role,
        domain=plan.domain,
        mixture={d: w for d, w in plan.mixture.items() if w > 0},
        base_hash=base_hash_of(plan.init),
        init=plan.init,
        tokens_seen=plan.tokens,
        seed=plan.seed,
        schedule={"trainer": "command", "command": plan.command, "converter": plan.converter},
    )
    provenance.write(hf)  # written last: the directory is now a finished model
    return provenance


def register_finished(config: RunConfig, run: RunDir, plans: Sequence[CommandRun]) -> tuple[list[str], list[str]]:
    """Register every run whose checkpoint exists (running the converter when one is set and the
    HF directory is missing). Returns (registered names, missing names)."""
    registered, missing = [], []
    for p in plans:
        hf, out = Path(p.hf_dir), Path(p.output_dir)
        if p.converter and not (hf / CONFIG_FILE).is_file() and out.is_dir() and any(out.iterdir()):
            _shell(p.converter, run, f"converter of {p.name}")
        if (hf / CONFIG_FILE).is_file():
            register_checkpoint(config, run, p)
            registered.append(p.name)
        else:
            missing.append(p.name)
    return registered, missing


def _shell(command: str, run: RunDir, what: str) -> None:
    log.info("running %s: %s", what, command)
    run.train_commands_log.parent.mkdir(parents=True, exist_ok=True)
    with open(run.train_commands_log, "a") as fh:
        fh.write(f"$ {command}\n")
        fh.flush()
        res = subprocess.run(command, shell=True, cwd=run.root, stdout=fh, stderr=subprocess.STDOUT)
    if res.returncode != 0:
        raise DemixError(
            f"the {what} failed with exit code {res.returncode}: {command}",
            f"see {run.train_commands_log}; finished runs are kept and skipped on the next call",
        )


def execute_plan(config: RunConfig, run: RunDir, plans: Sequence[CommandRun]) -> list[str]:
    """Run each unfinished plan here, one after the other: command, converter, registration.
    Returns the names trained now (finished ones, holding ``demix.json``, are skipped)."""
    write_plan(config, run, plans)
    done = []
    for p in plans:
        if is_finished(p.hf_dir):
            continue
        if not (Path(p.hf_dir) / CONFIG_FILE).is_file():  # a crash after training: just register
            _shell(p.command, run, f"trainer command of {p.name}")
            if p.converter:
                _shell(p.converter, run, f"converter of {p.name}")
        register_checkpoint(config, run, p)
        done.append(p.name)
    return done


def describe(plans: Sequence[CommandRun]) -> str:
    """What would run, for ``--dry-run``: per run its command, converter and mixture file."""
    out = []
    for p in plans:
        out += [
            f"# {p.name}: {p.tokens:,} tokens, seed {p.seed}, data mixture {json.dumps(p.mixture)}",
            f"#   data-mixture file: {p.mixture_file}",
            p.command,
        ]
        if p.converter:
            out.append(p.converter)
    return "\n".join(out) + "\n"


def train_components_by_command(config: RunConfig, run: RunDir, domains: Sequence[str]) -> dict[str, TrainResult]:
    """The components of ``domains`` trained by ``train.command.template``, one after the other
    here; with ``train.command.slurm`` the plan is written for Slurm and, while some run is
    unfinished, a DemixError says how to submit and register it. Returns domain -> result."""
    from demix.training.result import TrainResult

    plans = plan_command_runs(config, run, ("component",), domains=domains)
    if config.train.command.slurm:
        out = write_plan(config, run, plans)
        waiting = [p.name for p in plans if not is_finished(p.hf_dir)]
        if waiting:
            raise DemixError(
                f"train.command.slurm is set: {len(waiting)} component run(s) are left to Slurm ({', '.join(waiting)})",
                f"submit them with `sbatch {out / 'slurm_array.sh'}`, after the jobs finish run "
                f"`demix train command {run.config.resolve()} --register`, then run this command again",
            )
        trained: set[str] = set()
    else:
        trained = set(execute_plan(config, run, plans))
    return {
        str(p.domain): TrainResult(Path(p.hf_dir), read_provenance(p.hf_dir), skipped=p.name not in trained) for p in plans
    }
