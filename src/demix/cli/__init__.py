"""The `demix` command: one verb per pipeline stage.

Each stage's verbs live in their own module here (``prepare.py``, ``train.py``, ``merge.py``,
...), registered on the one Typer app by :func:`_register`. Verbs parse arguments, call the
library, and print; the work is done in the library so it can be used without the CLI.
"""

from __future__ import annotations

import importlib
import sys
from typing import NoReturn

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
_VERB_MODULES = ["run", "init", "prepare", "train", "search", "report", "export", "merge", "eval", "fidelity", "status"]


def _register() -> None:
    for name in _VERB_MODULES:
        try:
            importlib.import_module(f"demix.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"demix.cli.{name}":
                raise


#: What Ctrl-C prints: every stage commits its work as it goes, so the same command resumes.
INTERRUPTED = "interrupted; run again to resume"
#: The exit code of a command stopped by SIGINT (128 + 2), what shells report for Ctrl-C.
INTERRUPTED_CODE = 130


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script. The exit code a verb asks for (``typer.Exit(2)``, or a
    returned int) is the process's; user errors print one message and exit 1; Ctrl-C prints how
    to resume and exits 130."""
    _register()
    from demix.cli._common import console

    console.quiet = False  # a verb's --quiet holds for that call only (main may run several in one process)
    from demix.cli._common import _previous_configs

    _previous_configs.clear()
    try:
        # Non-standalone, typer hands back the exit code instead of exiting (and turns Ctrl-C
        # inside a verb into code 130): it is ours to pass on.
        code = app(args=argv, standalone_mode=False)
    except DemixError as exc:
        from demix.cli._common import restore_configs

        restore_configs()
        _fail(exc)
    except OSError as exc:
        from demix.rundir import USER_ERRNOS, os_error

        if exc.filename is None and exc.errno not in USER_ERRNOS:
            raise  # no path and nothing the user can mend: a bug, keep its traceback
        _fail(os_error(exc))
    except KeyboardInterrupt:
        code = INTERRUPTED_CODE
    except Exception as exc:
        # Usage errors of the click that typer bundles: print them like click would.
        if type(exc).__name__ == "Abort":  # click's Abort: Ctrl-C or end of input at a prompt
            code = INTERRUPTED_CODE
        elif hasattr(exc, "show") and hasattr(exc, "exit_code"):
            exc.show()
            sys.exit(exc.exit_code)
        else:
            raise
    if code == INTERRUPTED_CODE:
        print(INTERRUPTED, file=sys.stderr)
    if isinstance(code, int) and not isinstance(code, bool) and code != 0:
        sys.exit(code)


def _fail(exc: DemixError) -> NoReturn:
    """Print a user error (markup-free, unwrapped: paths stay whole) and exit 1."""
    from rich.console import Console
    from rich.markup import escape

    err = Console(stderr=True, soft_wrap=True)
    err.print(f"[bold red]error:[/] {escape(exc.what)}")
    if exc.fix:
        err.print(f"[bold]fix:[/] {escape(exc.fix)}")
    sys.exit(1)
