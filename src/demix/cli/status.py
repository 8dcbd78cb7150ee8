"""`demix status RUN_DIR`: how the stored merged evaluations stand against the run's current
domains, base and components (valid, stale, set aside, by reason)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from demix.cli import app
from demix.cli._common import console


@app.command("status", rich_help_panel="3. Checks and tools")
def status_cmd(
    run_dir: Annotated[Path, typer.Argument(help="The run directory (output_dir of the config), e.g. runs/demo.")],
) -> None:
    """Count the run's stored merged evaluations: valid for the current domains and components, stale (made with a base or component retrained since: evaluated again when the search plans them) and set aside (non-zero weight on a removed domain: kept, never fitted), with the domains behind each. Reads RUN_DIR/config.yaml, the store and the checkpoints' hashes; changes nothing but the hash cache."""
    from demix import proxy_kind
    from demix.errors import DemixError
    from demix.rundir import RunDir
    from demix.search.evidence import REASONS, VALID, evidence_of_run

    run = RunDir(run_dir)
    if not run.config.is_file():
        raise DemixError(f"'{run.root}' is not a run directory (no {run.config.name})",
                         "pass the output_dir of a run that `demix run` or `demix search` wrote")
    evidence, total = evidence_of_run(run, proxy_kind.MERGED)
    counts = evidence.counts()
    console.print(f"[bold]{run.root}[/]: {total} stored merged evaluation(s), domains {', '.join(evidence.domains)}")
    console.print(f"  valid for the current components: {counts.get(VALID, 0)}")
    for reason in REASONS:
        n = counts.get(reason, 0)
        by = evidence.by_domain(reason)
        tail = f" ({', '.join(f'{d}: {m}' for d, m in by.items())})" if by else ""
        console.print(f"  {reason}: {n}{tail}")
