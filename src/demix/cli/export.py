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
    weights: Annotated[
        str,
        typer.Option(
            "--weights",
            help="data: the data mixture, token shares of the training data (what to train on). "
            "components: the component weights, the merge coefficients of the proxies (not token shares).",
        ),
    ] = "data",
) -> None:
    """Export the chosen data mixture of best_mixture.json in the format a trainer reads.

    By default the data mixture is written: the token shares of the training data the winning proxies stand for, what to train on (tokens and epochs come from it too). --weights components writes the component weights instead, the merge coefficients of the proxies, which are not token shares; files that take a comment say which one they hold.

    Each format states its unit: token shares for trainers that sample fixed-length sequences (megatron, nemo, nanotron, olmo-core, mosaic, json); document probabilities for hf-datasets (interleave_datasets), converted from the data mixture with each domain's mean document length.

    Without --data-prefix the domain names stand in for the data paths.
    """
    from demix.exporters import export, get_exporter, mixture_label
    from demix.rundir import atomic_write_text

    text = export(run_dir, to, data_prefix, weights)
    what = mixture_label(weights)
    if out is None:
        sys.stdout.write(text)
        # stdout stays the file alone (for pipes); what it holds goes to stderr.
        print(f"({to}: {what})", file=sys.stderr)
        return
    atomic_write_text(out, text)
    # Unwrapped and markup-free: the path is for copying.
    console.print(f"wrote {out} ({to}; {what}; unit: {get_exporter(to).unit_of(weights)})", soft_wrap=True, markup=False)
