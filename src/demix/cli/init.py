"""`demix init`: write a commented example config."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from demix.cli import app
from demix.cli._common import console
from demix.configs import commented_example
from demix.errors import DemixError
from demix.rundir import atomic_write_text


@app.command("init", rich_help_panel="2. Stages, in pipeline order")
def init(
    path: Annotated[Path, typer.Argument(help="Where to write the config.")] = Path("demix.yaml"),
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented example config (every key, with what it means) to PATH."""
    if path.exists() and not force:
        raise DemixError(f"'{path}' already exists", "pass --force to overwrite it, or choose another path")
    atomic_write_text(path, commented_example())
    console.print(f"wrote {path}: edit the domains, then run `demix run {path}`")
