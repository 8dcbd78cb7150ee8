"""`demix export`: write the chosen mixture in the format a trainer reads."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from demix.cli import app
from demix.cli._common import console

FORMATS_HELP = ("Format: megatron, megatron-per-split, megatron-bridge, nemo2, nemo1, nanotron, olmo-core, "
                "olmo-core-sources, hf-datasets, mosaic, litdata, torchtitan or json.")


@app.command("export", rich_help_panel="2. Stages, in pipeline order")
def export_cmd(
    run_dir: Annotated[Path, typer.Argument(help="Run directory (or a best_mixture.json file).")],
    to: Annotated[str, typer.Option("--to", help=FORMATS_HELP)] = "json",
    out: Annotated[Path | None, typer.Option("--out", help="Write to this file (default: print to the terminal).")] = None,
    data_prefix: Annotated[
        list[str] | None,
        typer.Option("--data-prefix", help="Where a domain's data is for the trainer, DOMAIN=PATH (repeatable; every "
                     "domain the file names needs one)."),
    ] = None,
    weights: Annotated[
        str,
        typer.Option(
            "--weights",
            help="data: the data mixture, token shares of the training data (what to train on). "
            "components: the component weights, the merge coefficients of the proxies (not token shares).",
        ),
    ] = "data",
    seq_length: Annotated[
        int | None,
        typer.Option("--seq-length", help="The trainer's sequence length in tokens: the budget in samples (Megatron "
                     "--train-samples, Megatron-Bridge, NeMo 2, MosaicML epoch_size; mosaic needs it)."),
    ] = None,
    global_batch_tokens: Annotated[
        int | None,
        typer.Option("--global-batch-tokens", help="Tokens per global batch (OLMo-core's global_batch_size, which "
                     "olmo-core needs; NeMo 2's global_batch_size with --seq-length)."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="The trainer's data-sampling seed, where the format has one.")] = 42,
    repetition_headroom: Annotated[
        float,
        typer.Option("--repetition-headroom", help="OLMo-core: allow this fraction more repetition than planned "
                     "(its token counts differ from demix's by a few percent)."),
    ] = 0.10,
    allow_placeholder_paths: Annotated[
        bool,
        typer.Option("--allow-placeholder-paths", help="Write a domain's name where no --data-prefix gives its path "
                     "(for you to replace; else an error)."),
    ] = False,
) -> None:
    """Export the chosen data mixture of best_mixture.json in the format a trainer reads.

    By default the data mixture is written: the token shares of the training data the winning proxies stand for, what to train on (tokens and epochs come from it too). --weights components writes the component weights instead, the merge coefficients of the proxies, which are not token shares; files that take a comment say which one they hold.

    Each format states its unit: token shares for trainers that sample fixed-length sequences; document probabilities for hf-datasets (interleave_datasets), converted from the data mixture with each domain's mean document length.

    Every domain in the file needs --data-prefix DOMAIN=PATH (or --allow-placeholder-paths). A domain the plan reads more than once (epochs > 1) is warned about: most trainers repeat data without a word.
    """
    from demix.exporters import ExportOptions, get_exporter, load_best_mixture, mixture_label, parse_prefixes, repetition_warning
    from demix.rundir import atomic_write_text

    options = ExportOptions(seq_length=seq_length, global_batch_tokens=global_batch_tokens, seed=seed,
                            repetition_headroom=repetition_headroom, allow_placeholder_paths=allow_placeholder_paths)
    exporter = get_exporter(to)
    best = load_best_mixture(run_dir)
    export = exporter.prepare(best, parse_prefixes(data_prefix, best.domains), weights, options)
    text = exporter.write(export)
    what = mixture_label(weights)
    # stdout stays the file alone (for pipes); what it holds, how to use it and warnings go to stderr.
    if out is None:
        sys.stdout.write(text)
        print(f"({to}: {what})", file=sys.stderr)
    else:
        atomic_write_text(out, text)
        # Unwrapped and markup-free: the path is for copying.
        console.print(f"wrote {out} ({to}; {what}; unit: {exporter.unit_of(weights)})", soft_wrap=True, markup=False)
    for note in exporter.notes(export):
        print(f"use: {note}", file=sys.stderr)
    warning = repetition_warning(best, to, weights)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
