"""The bad-input battery's tools: run a CLI verb as a user would, and prove nothing outside the
run's own outputs changed.

    before = snapshot(tmp_path)
    result = cli("prepare", str(config))            # in process: exit code, stdout, stderr
    assert result.code == 1 and "math.txt" in result.err
    assert_unchanged(before, snapshot(tmp_path), outputs=[run_dir])

``cli_subprocess`` runs ``python -m demix`` in a child process (for signals: Ctrl-C is SIGINT).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        """stdout and stderr with rich's line wrapping undone, for matching messages."""
        return " ".join((self.out + "\n" + self.err).split())


def cli(*args: str) -> CliResult:
    """``demix ARGS`` in this process, as the console script runs it: its exit code and output."""
    from demix.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return CliResult(code, out.getvalue(), err.getvalue())


def demix_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", COLUMNS="200")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


def cli_subprocess(args: Sequence[str], cwd: Path | None = None) -> subprocess.Popen[str]:
    """``python -m demix ARGS`` in a child process (stdout and stderr together), with SIGINT at its
    default disposition, as in a terminal: a test suite started in the background (``make test &``,
    some CI runners) has SIGINT ignored, children inherit that, and Python then never raises
    KeyboardInterrupt, so a Ctrl-C test would see the command finish instead."""
    return subprocess.Popen(
        [sys.executable, "-m", "demix", *args], cwd=cwd or ROOT, env=demix_env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha1 of every file under ``root`` (directories as ``<dir>``)."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "<dir>" if p.is_dir() else hashlib.sha1(p.read_bytes()).hexdigest()
    return out


def assert_unchanged(before: dict[str, str], after: dict[str, str], outputs: Iterable[Path | str] = (), root: Path | None = None) -> None:
    """Every path of ``before`` is still there with the same content, except under ``outputs``
    (the run's own output directories, given relative to the snapshot root or absolute with ``root``)."""
    prefixes = []
    for o in outputs:
        o = Path(o)
        if o.is_absolute():
            assert root is not None, "absolute outputs need the snapshot root"
            o = o.relative_to(root)
        prefixes.append(str(o))

    def is_output(rel: str) -> bool:
        return any(rel == p or rel.startswith(p + os.sep) for p in prefixes)

    lost = [p for p in before if not is_output(p) and p not in after]
    changed = [p for p in before if not is_output(p) and p in after and after[p] != before[p]]
    assert not lost and not changed, f"user files lost: {lost}; changed: {changed}"
