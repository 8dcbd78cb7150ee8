"""`demix.cli.main`, the console script's entry point: the exit code a verb asks for is the
process's, Ctrl-C says how to resume, and user errors (DemixError, an OSError on a path) print
one message without a traceback."""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator

import pytest
import typer

from demix.cli import app
from demix.errors import DemixError
from helpers.battery import cli

INTERRUPTED = "interrupted; run again to resume"


@pytest.fixture
def verb() -> Iterator[Callable[[Callable[[], object]], str]]:
    """Register a throwaway verb on the app (``verb(body)`` returns its name); removed afterwards."""
    added = []

    def add(body: Callable[[], object]) -> str:
        name = f"test-verb-{len(added)}"
        app.command(name)(body)
        added.append(app.registered_commands[-1])
        return name

    yield add
    for info in added:
        app.registered_commands.remove(info)


def test_a_verb_that_finishes_exits_0(verb):
    result = cli(verb(lambda: None))
    assert result.code == 0 and result.err == ""


def test_the_exit_code_a_verb_raises_is_the_exit_code(verb):
    # What `train command --register` does when runs are unfinished: typer.Exit(2).
    def unfinished() -> None:
        raise typer.Exit(2)

    assert cli(verb(unfinished)).code == 2


def test_the_exit_code_a_verb_returns_is_the_exit_code(verb):
    assert cli(verb(lambda: 3)).code == 3


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, typer.Abort])
def test_ctrl_c_exits_130_and_says_how_to_resume(verb, interrupt):
    def body() -> None:
        raise interrupt()

    result = cli(verb(body))
    assert result.code == 130
    assert INTERRUPTED in result.err and "Traceback" not in result.text


def test_a_demix_error_is_one_message_and_exit_1_with_its_brackets_kept(verb):
    def body() -> None:
        raise DemixError("domain [general] is given twice in '/data/[x].json'", "give each domain once")

    result = cli(verb(body))
    assert result.code == 1
    assert "error: domain [general] is given twice in '/data/[x].json'" in result.err
    assert "fix: give each domain once" in result.err


@pytest.mark.parametrize(
    ("exc", "named", "says"),
    [
        (PermissionError(errno.EACCES, "Permission denied", "/srv/out/mix.json"), "/srv/out/mix.json", "Permission denied"),
        (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/run"), "/mnt/ro/run", "writable file system"),
        (FileExistsError(errno.EEXIST, "File exists", "/home/u/run"), "/home/u/run", "File exists"),
        (OSError(errno.ENOSPC, "No space left on device"), "No space left on device", "free space"),
    ],
)
def test_an_os_error_on_a_path_is_one_message_naming_it(verb, exc, named, says):
    def body() -> None:
        raise exc

    result = cli(verb(body))
    assert result.code == 1
    assert named in result.text and says in result.text and "Traceback" not in result.text


def test_an_os_error_that_is_a_bug_keeps_its_traceback(verb):
    # No path and no full/read-only disk: nothing the user can fix, so it is not dressed up.
    def body() -> None:
        raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")

    with pytest.raises(ConnectionRefusedError):
        cli(verb(body))
