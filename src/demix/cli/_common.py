"""Shared pieces of the CLI verbs: config loading with overrides, the run directory, logging."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from demix.config import RunConfig, load_config, save_config
from demix.errors import DemixError
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
    return config, start_run(config, quiet)


def start_run(config: RunConfig, quiet: bool = False) -> RunDir:
    """Create the run directory (output_dir), save the resolved config, start the log file."""
    run = RunDir(config.run_dir)
    if run.root.exists() and not run.root.is_dir():
        raise DemixError(
            f"output_dir '{run.root}' is a file, not a directory", "set output_dir to a directory (a new one, or an earlier run's)"
        )
    run.root.mkdir(parents=True, exist_ok=True)
    _previous_configs.setdefault(run.config, run.config.read_text(encoding="utf-8") if run.config.is_file() else None)
    save_config(config, run.config)
    setup_logging(run, quiet)
    return run


#: config.yaml path -> its text before this process first saved it (None: there was none).
_previous_configs: dict[Path, str | None] = {}


def restore_configs() -> None:
    """Put back each run's config.yaml as it was before this command saved it. Called when a
    command is refused (a DemixError): the run directory then describes what its files were made
    with, not the settings that were refused (e.g. a search refusing scores of other settings)."""
    from demix.rundir import atomic_write_text

    for path, text in _previous_configs.items():
        if text is not None:
            try:
                atomic_write_text(path, text)
            except DemixError:
                pass  # the refusal is the error to show; a config that cannot be written is secondary
    _previous_configs.clear()


def setup_logging(run: RunDir, quiet: bool = False) -> None:
    """Log to <run>/logs/demix.log (always, at INFO) and to the console unless quiet."""
    run.log.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger("demix")
    root.setLevel(logging.INFO)
    for h in list(root.handlers):
        root.removeHandler(h)
    fh = RunLogHandler(run.log)
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(fh)
    console.quiet = quiet


class RunLogHandler(logging.FileHandler):
    """The run's log file. A write that fails (a full disk) says so once, in one line, and the
    log stops; logging's default prints a traceback for every message after."""

    failed = False

    def handleError(self, record: logging.LogRecord) -> None:
        if self.failed:
            return
        self.failed = True
        exc = sys.exc_info()[1]
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        print(f"warning: cannot write the log '{self.baseFilename}' ({reason}); the command goes on without it", file=sys.stderr)


def stage_header(title: str, what: str, where: Path | str) -> None:
    """A short header printed before each stage: what it does and where it writes."""
    console.rule(f"[bold]{title}")
    console.print(f"{what}\n[dim]writes: {where}[/]")
    logging.getLogger("demix").info("stage %s: %s -> %s", title, what, where)
