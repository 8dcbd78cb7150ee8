"""`demix export`: write the chosen mixture in the format a trainer reads."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from demix.cli import app
from demix.cli._common import console


@app.command("export", rich_help_panel="2. Stages, in pipeline order")
def export_cmd(
    run_dir: Annotated[Path, typer.Argument(help="Run directory (or a best_mixture.json file).")],
    to: Annotated[
        str, typer.Option("--to", help="Format: megatron, nemo, nanotron, olmo-core, hf-datasets, mosaic or json.")
    ] = "json",
    out: Annotated[Path | None, typer.Option("--out", help="Write to this file (default: print to the terminal).")] = None,
    data_prefix: Annotated[
        list[str] | None,
        typer.Option("--data-prefix", help="Where a domain's data is for the trainer, DOMAIN=PATH (repeatable)."),
    ] = None,
) -> None:
    """Export best_mixture.json in the format a trainer reads.

    Each format states its unit: token shares for trainers that sample fixed-length sequences (megatron, nemo, nanotron, olmo-core, mosaic, json); document probabilities for hf-datasets (interleave_datasets), converted with each domain's mean document length.

    Without --data-prefix the domain names stand in for the data paths.
    """
    from demix.exporters import export, get_exporter
    from demix.rundir import atomic_write_text

    text = export(run_dir, to, data_prefix)
    if out is None:
        sys.stdout.write(text)
        return
    atomic_write_text(out, text)
    # Unwrapped and markup-free: the path is for copying.
    console.print(f"wrote {out} ({to}; unit: {get_exporter(to).unit})", soft_wrap=True, markup=False)
