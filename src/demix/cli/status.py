"""`demix status RUN_DIR`: how the stored merged evaluations stand against the run's current
domains, base and components (valid, stale, set aside, by reason), and, of the search's valid
rows, which were scored under other evaluation or merge settings (by what changed) or before
benchmarks were added."""

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
    """Count the run's stored merged evaluations: valid for the current domains and components, stale (made with a base or component retrained since: evaluated again when the search plans them) and set aside (non-zero weight on a removed domain: kept, never fitted), with the domains behind each; of the valid ones, those scored under other evaluation or merge settings (refused by the search until --rescore), with what changed, and those scored before benchmarks were added (kept). Reads RUN_DIR/config.yaml, the store and the checkpoints' hashes; changes nothing but the hash cache."""
    from demix import proxy_kind
    from demix.errors import DemixError
    from demix.rundir import RunDir
    from demix.search.evidence import REASONS, VALID, standing_of_run
    from demix.search.settings import RESCORE_HINT

    run = RunDir(run_dir)
    if not run.config.is_file():
        raise DemixError(f"'{run.root}' is not a run directory (no {run.config.name})",
                         "pass the output_dir of a run that `demix run` or `demix search` wrote")
    standing = standing_of_run(run, proxy_kind.MERGED)
    evidence = standing.evidence
    counts = evidence.counts()
    console.print(f"[bold]{run.root}[/]: {standing.total} stored merged evaluation(s), domains {', '.join(evidence.domains)}",
                  soft_wrap=True)
    console.print(f"  valid for the current components: {counts.get(VALID, 0)}", soft_wrap=True)
    console.print(f"    of these, scored under other evaluation or merge settings: {standing.other_settings_rows}"
                  + (f" (refused by the search; {RESCORE_HINT})" if standing.other_settings_rows else ""),
                  highlight=False, soft_wrap=True)
    for changes, n in standing.other_settings.items():
        console.print(f"      {n}: {'; '.join(changes)}", highlight=False, markup=False, soft_wrap=True)
    console.print(f"    of these, scored before benchmarks were added (kept, fitted on the benchmarks they have): "
                  f"{standing.benchmarks_added_rows}", highlight=False, soft_wrap=True)
    for added, n in standing.benchmarks_added.items():
        console.print(f"      {n}: {', '.join(added)} added", highlight=False, markup=False, soft_wrap=True)
    for reason in REASONS:
        n = counts.get(reason, 0)
        by = evidence.by_domain(reason)
        tail = f" ({', '.join(f'{d}: {m}' for d, m in by.items())})" if by else ""
        console.print(f"  {reason}: {n}{tail}", soft_wrap=True)
