"""Shared pieces of the CLI verbs: config loading with overrides, the run directory, logging."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from demix.config import RunConfig, load_config, save_config
from demix.rundir import RunDir

console = Console()

ConfigArg = Annotated[Path, typer.Argument(help="Run config (YAML). `demix init` writes an example.")]
OverridesOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key, e.g. -s train.base.lr=3e-4 (repeatable)."),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print only errors and the final result.")]


def open_run(config_path: Path, overrides: list[str] | None, quiet: bool = False) -> tuple[RunConfig, RunDir]:
    """Load the config, create the run directory, save the resolved config, start the log file."""
    config = load_config(config_path, overrides or [])
    run = RunDir(config.run_dir)
    run.root.mkdir(parents=True, exist_ok=True)
    save_config(config, run.config)
    setup_logging(run, quiet)
    return config, run


def setup_logging(run: RunDir, quiet: bool = False) -> None:
    """Log to <run>/logs/demix.log (always, at INFO) and to the console unless quiet."""
    run.log.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger("demix")
    root.setLevel(logging.INFO)
    for h in list(root.handlers):
        root.removeHandler(h)
    fh = logging.FileHandler(run.log)
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(fh)
    console.quiet = quiet


def stage_header(title: str, what: str, where: Path | str) -> None:
    """A short header printed before each stage: what it does and where it writes."""
    console.rule(f"[bold]{title}")
    console.print(f"{what}\n[dim]writes: {where}[/]")
    logging.getLogger("demix").info("stage %s: %s -> %s", title, what, where)
