"""`demix train base|components|reference|trained-proxy`: the training stages."""

from __future__ import annotations

from typing import Annotated

import typer

from demix.cli import app
from demix.cli._common import ConfigArg, OverridesOpt, QuietOpt, console, open_run, stage_header

train_app = typer.Typer(
    help=(
        "Train the models DeMix merges: the base (pretrained on the general domain), then one "
        "component per domain (continued from the base on about half general, half domain data). "
        "Also reference models and trained proxies on a given mixture, for fidelity checks. "
        "Finished models are skipped; an interrupted training resumes from its last checkpoint."
    ),
    no_args_is_help=True,
)
app.add_typer(
    train_app,
    name="train",
    rich_help_panel="2. Stages, in pipeline order",
    # The group's own --help keeps the long text; the verb list gets one line (after prepare).
    short_help="(after prepare) Train the base, then one component per domain; also reference models.",
)

MixtureOpt = Annotated[
    str,
    typer.Option(
        "--mixture",
        "-m",
        help="The data mixture to train on (token shares summing to 1): general=0.5,math=0.3,code=0.2, JSON, or a .json file.",
    ),
]


def _print_result(label: str, result) -> None:
    from demix.training import provenance_summary

    console.print(f"[bold]{label}[/]: {provenance_summary(result)}")


@train_app.command("base")
def base(config: ConfigArg, overrides: OverridesOpt = None, quiet: QuietOpt = False) -> None:
    """Pretrain the base model from scratch on the general domain (or check model.base_path)."""
    cfg, run = open_run(config, overrides, quiet)
    from demix.checkpoints import base_dir
    from demix.pipeline import base_stage_description
    from demix.training import train_base

    stage_header("train base", base_stage_description(cfg), base_dir(cfg, run))
    _print_result("base", train_base(cfg, run, show_progress=not quiet))


@train_app.command("components")
def components(
    config: ConfigArg,
    domain: Annotated[
        list[str] | None,
        typer.Option("--domain", "-d", help="Train only this domain's component (repeatable). Default: all."),
    ] = None,
    overrides: OverridesOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Train one component per domain from the base (general_share general data + the domain),
    with train.backend: the HF Trainer recipe, or your trainer (train.command.template)."""
    cfg, run = open_run(config, overrides, quiet)
    from demix.training import train_components

    share = cfg.train.components.general_share
    who = " with your trainer (train.command.template)" if cfg.train.backend == "command" else ""
    stage_header(
        "train components",
        f"continuing the base on each domain ({share:.0%} general data){who} for "
        f"{cfg.train.components.tokens:,} tokens each",
        run.models / "components",
    )
    for name, result in train_components(cfg, run, domain or None, show_progress=not quiet).items():
        _print_result(f"component {name}", result)


def _train_mixture(config, overrides, quiet, mixture: str, role: str) -> None:
    cfg, run = open_run(config, overrides, quiet)
    from demix.mixtures import mixture_key, parse_mixture, validate_mixture
    from demix.training import reference_recipe, train_on_mixture

    # A model is trained on a data mixture: from a best_mixture.json that is its data_mixture.
    weights = validate_mixture(parse_mixture(mixture, kind="data"), cfg.data.domain_names, normalize=cfg.merge.normalize)
    key = mixture_key(weights)
    if role == "reference":
        recipe, out = reference_recipe(cfg), run.reference(key)
    else:
        recipe, out = cfg.train.trained_proxy, run.trained_proxy(key)
    shown = ", ".join(f"{d}={w:.3g}" for d, w in weights.items() if w > 0)
    stage_header(f"train {role.replace('_', ' ')}", f"continuing the base on the data mixture {shown} for {recipe.tokens:,} tokens", out)
    _print_result(role.replace("_", " "), train_on_mixture(cfg, run, weights, out, recipe, role, show_progress=not quiet))


@train_app.command("reference")
def reference(config: ConfigArg, mixture: MixtureOpt, overrides: OverridesOpt = None, quiet: QuietOpt = False) -> None:
    """Train a reference model on a data mixture (train.reference recipe), the ground truth for proxies."""
    _train_mixture(config, overrides, quiet, mixture, "reference")


@train_app.command("trained-proxy")
def trained_proxy(config: ConfigArg, mixture: MixtureOpt, overrides: OverridesOpt = None, quiet: QuietOpt = False) -> None:
    """Train a short proxy on a data mixture (train.trained_proxy recipe): the RegMix-style baseline."""
    _train_mixture(config, overrides, quiet, mixture, "trained_proxy")


@train_app.command("command")
def command(
    config: ConfigArg,
    domain: Annotated[
        list[str] | None,
        typer.Option("--domain", "-d", help="Only this domain's component (repeatable). Default: every component."),
    ] = None,
    reference: Annotated[
        list[str] | None,
        typer.Option("--reference", "-r", help="Also a reference model on this data mixture (repeatable), e.g. general=0.5,math=0.5."),
    ] = None,
    no_components: Annotated[bool, typer.Option("--no-components", help="Only the --reference runs.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Write the data-mixture files and scripts, print the commands, run nothing.")] = False,
    register: Annotated[
        bool, typer.Option("--register", help="Run nothing; register the checkpoints that exist (after Slurm jobs finished).")
    ] = False,
    overrides: OverridesOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Train components (and reference models) with YOUR trainer: the `command` backend.

    For each run, writes the data-mixture file in train.command.format (megatron, megatron-bridge, nemo2, olmo-core, ...) under <run>/train_commands/, fills train.command.template ({data_mixture_file}, {output_dir}, {tokens}, {seed}, {domain}, ...) and runs it here, one run after the other; then converts the output (train.command.converter) and registers the checkpoint for merging.

    With train.command.slurm=true it writes slurm_array.sh instead: submit it with sbatch, then run this again with --register. See docs/scaling.md.
    """
    cfg, run = open_run(config, overrides, quiet)
    from demix.mixtures import parse_mixture
    from demix.training.command import describe, execute_plan, plan_command_runs, register_finished, write_plan
    from demix.training.roles import check_given_checkpoints

    check_given_checkpoints(cfg, run)  # before a plan is written or anything runs

    roles = () if no_components else ("component",)
    mixtures = [parse_mixture(m, kind="data") for m in reference or []]
    plans = plan_command_runs(cfg, run, roles, mixtures, domain or None)
    out = write_plan(cfg, run, plans)
    if dry_run or (cfg.train.command.slurm and not register):
        console.quiet = False
        typer.echo(describe(plans), nl=False)  # plain: commands must stay copy-pasteable, never wrapped
        hint = f"submit it with: sbatch {out / 'slurm_array.sh'}" if cfg.train.command.slurm else "nothing was run (--dry-run)"
        console.print(f"[dim]wrote {out} ({len(plans)} run(s)); {hint}[/]")
        return
    if register:
        done, missing = register_finished(cfg, run, plans)
        console.quiet = quiet and not missing  # exit code 2 says why, even with --quiet
        console.print(f"registered {len(done)} checkpoint(s); {len(missing)} not finished yet: {', '.join(missing) or '-'}")
        if missing:
            raise typer.Exit(2)  # not finished is not an error: scripts wait and call --register again
        return
    stage_header("train (command backend)", f"{len(plans)} run(s) of your trainer", out)
    trained = execute_plan(cfg, run, plans)
    console.print(f"trained and registered {len(trained)} run(s); {len(plans) - len(trained)} were already finished")
