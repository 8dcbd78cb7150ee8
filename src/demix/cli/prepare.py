"""`demix prepare`: split, tokenise and pack every domain of a run."""

from __future__ import annotations

from typing import Annotated

import typer

from demix.cli import app
from demix.cli._common import ConfigArg, OverridesOpt, QuietOpt, console, open_run, stage_header


@app.command("prepare", rich_help_panel="2. Stages, in pipeline order")
def prepare_cmd(
    config: ConfigArg,
    overrides: OverridesOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Prepare again even if the data is already prepared.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Read each domain's documents, hold out a share for evaluation, train the tokenizer and pack tokens.

    Sources are the config's data.domains: built-in corpora (builtin:general, builtin:math, builtin:math_problems, builtin:code) or your .jsonl/.txt/.parquet files (see docs/data.md).

    Writes the tokenizer, packed token files per domain and split, and data/provenance.json with each domain's licence and sizes. Skipped when already done for the same data config.
    """
    from demix.prepare import prepare

    cfg, run = open_run(config, overrides, quiet)
    stage_header("prepare", "split documents, train the tokenizer, pack tokens", run.data)
    result = prepare(cfg, run, progress=not quiet, force=force)
    if result.get("skipped"):
        console.print("[dim]data already prepared for this config; nothing to do (--force redoes it)[/]")

    from rich.console import JustifyMethod
    from rich.table import Table

    console.quiet = False  # the summary table is the result: shown even with --quiet
    table = Table(title=f"prepared data ({result['tokenizer']['vocab_size']} token vocabulary)")
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("domain", "left"), ("documents", "right"), ("train tokens", "right"), ("held-out tokens", "right"), ("licence", "left")
    )
    for col, just in columns:
        table.add_column(col, justify=just, overflow="fold")
    for name, d in result["domains"].items():
        tr, ho = d["splits"]["train"], d["splits"]["heldout"]
        table.add_row(name, f"{tr['documents'] + ho['documents']:,}", f"{tr['tokens']:,}", f"{ho['tokens']:,}", d["license"])
    console.print(table)
    console.print(f"prepared data in {run.data} (provenance: {run.provenance})")
