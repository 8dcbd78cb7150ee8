"""The live display of a search in the terminal: a progress bar of the round's proxies and a
table of the best predicted component weights after each round (rich). The table shows
component weights, what the search ranks; the data mixture they stand for is in
``best_mixture.json`` and the summary printed at the end.

    with LiveSearchDisplay(config.data.domain_names, enabled=not quiet) as display:
        search(config, run, on_event=display)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from demix.search.loop import PROXY_EVALUATED, PROXY_SCREENED, ROUND_RANKED, ROUND_STARTED, SCREENING_STARTED, SearchEvent
from demix.search.ranking import Ranking


class LiveSearchDisplay:
    """A :data:`~demix.search.loop.OnEvent` callback that draws the search's progress; does
    nothing when ``enabled`` is false. Use it as a context manager (or call :meth:`close`): the
    display starts with the first event and stays on screen when closed."""

    def __init__(self, domains: Sequence[str], enabled: bool = True, rows: int = 5, console: Any = None) -> None:
        self.domains = list(domains)
        self.enabled = enabled
        self.rows = rows
        self.console = console
        self._live: Any = None
        self._task: Any = None

    def __enter__(self) -> LiveSearchDisplay:
        self._start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _start(self) -> None:
        if not self.enabled or self._live is not None:
            return
        from rich.console import Group
        from rich.live import Live
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.table import Table

        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()
        )
        self._group = Group
        kwargs = {"console": self.console} if self.console is not None else {}
        self._live = Live(Group(self._progress, Table(title="best predicted component weights (none yet)")),
                          refresh_per_second=4, transient=False, **kwargs)
        self._live.start()

    def __call__(self, event: SearchEvent) -> None:
        if not self.enabled:
            return
        self._start()
        if event.kind in (ROUND_STARTED, SCREENING_STARTED):
            if self._task is not None:
                self._progress.remove_task(self._task)
            what = "proxies" if event.kind == ROUND_STARTED else "screens"
            self._task = self._progress.add_task(f"round {event.round}: {what}", total=event.planned, completed=event.done)
        elif event.kind in (PROXY_EVALUATED, PROXY_SCREENED) and self._task is not None:
            self._progress.advance(self._task)
        elif event.kind == ROUND_RANKED and event.ranking is not None:
            self._live.update(self._group(self._progress, self.table(event.round, event.ranking, event.evaluations)))

    def table(self, r: int, ranking: Ranking, evaluations: int) -> Any:
        """The top-k mean and the best-ranked candidates: component weights, predicted
        capabilities, objective."""
        from rich.table import Table

        table = Table(title=f"best predicted component weights after round {r} ({evaluations} evaluations)",
                      caption="component weights: the merge coefficients of each proxy (not the data mixture)")
        table.add_column("#")
        for d in self.domains:
            table.add_column(f"component {d}", justify="right")
        for c in ranking.capabilities:
            table.add_column(f"{c} (pred)", justify="right")
        table.add_column("objective", justify="right")
        best = [("top-k mean", ranking.mean, None)] + [
            (str(i + 1), ranking.weights[j], j) for i, j in enumerate(ranking.order[: self.rows])
        ]
        for label, w, j in best:
            caps = ["" for _ in ranking.capabilities] if j is None else [f"{v:.4g}" for v in ranking.capability_scores[j]]
            obj = "" if j is None else f"{ranking.objective[j]:.4f}"
            table.add_row(label, *[f"{x:.3f}" for x in w], *caps, obj)
        return table

    def close(self) -> None:
        """Stop refreshing; the last frame stays on screen."""
        if self._live is not None:
            self._live.stop()
            self._live = None
