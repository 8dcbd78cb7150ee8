"""The `demix` command: one verb per pipeline stage.

Each stage's verbs live in their own module here (``prepare.py``, ``train.py``, ``merge.py``,
...), registered on the one Typer app by :func:`_register`. Verbs parse arguments, call the
library, and print; the work is done in the library so it can be used without the CLI.
"""

from __future__ import annotations

import importlib
import sys

import typer

from demix.errors import DemixError

app = typer.Typer(
    name="demix",
    help=(
        "DeMix: find the data mixture for LLM pretraining without training a model per mixture.\n\n"
        "Pipeline: prepare -> train base -> train components -> search (merge proxies, evaluate, "
        "predict, rank) -> export. `demix demo` runs it all on a built-in offline example."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

@app.callback()
def _root() -> None:
    """DeMix: find the data mixture for LLM pretraining without training a model per mixture."""


# Modules that add verbs to `app`. A module missing here simply adds no verb.
_VERB_MODULES = ["run", "init", "prepare", "train", "search", "report", "export", "merge", "eval", "fidelity"]


def _register() -> None:
    for name in _VERB_MODULES:
        try:
            importlib.import_module(f"demix.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"demix.cli.{name}":
                raise


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script: user errors print one message and exit 1."""
    _register()
    try:
        app(args=argv, standalone_mode=False)
    except DemixError as exc:
        from rich.console import Console

        Console(stderr=True).print(f"[bold red]error:[/] {exc.what}")
        if exc.fix:
            Console(stderr=True).print(f"[bold]fix:[/] {exc.fix}")
        sys.exit(1)
    except SystemExit:
        raise
    except Exception as exc:
        # Usage errors of the click that typer bundles: print them like click would.
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):
            exc.show()
            sys.exit(exc.exit_code)
        if type(exc).__name__ == "Abort":
            sys.exit(130)
        raise
