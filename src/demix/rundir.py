"""The run directory: every stage reads and writes known files here, so any stage can be re-run
or resumed alone. This module is the single place that names those files.

Layout (see README, "Run directory"):

    <run>/config.yaml                 resolved config
    <run>/logs/demix.log              log of every command run on this directory
    <run>/data/provenance.json        source and licence of each domain
    <run>/data/<domain>/{train,heldout}.bin + .idx.npy + meta.json   packed tokens
    <run>/tokenizer/                  PreTrainedTokenizerFast
    <run>/models/base/                HF checkpoint + demix.json
    <run>/models/components/<domain>/ HF checkpoint + demix.json
    <run>/models/references/<id>/     reference models (fidelity)
    <run>/models/trained_proxies/<id>/ training-based proxies (fidelity baseline)
    <run>/store.sqlite                every evaluated mixture and its scores
    <run>/search/round_<r>/           planned.json, cv.json, predictors/, pool.npz, selection.json, pareto.csv
    <run>/best_mixture.json           the chosen mixture
    <run>/fidelity/                   mixtures.json, scores.json, compute.json, audit.json, fidelity.json, <kind>.json
    <run>/report/                     report.html, report.md, figures/
    <run>/timings.json                stage times of every invocation
    <run>/train_commands/             rendered trainer commands of the command backend
    <run>/eval/tasks/                 lm-eval tasks written for this run

What a file *holds* is typed next to the stage that writes it (``demix.search.files``,
``demix.fidelity.files``); this module only knows where files are, plus the two facts every
stage asks the run directory for: token counts of the prepared data and stage timings.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from demix.errors import DemixError

#: What to do about an OSError on a path, by errno; the default covers the rest.
_OS_FIXES = {
    errno.ENOSPC: "free space on that disk (or choose a path on another one) and run the command again; "
    "files demix finished before are intact",
    errno.EDQUOT: "free space within your disk quota (or choose a path on another disk) and run the command again",
    errno.EROFS: "choose a path on a writable file system",
    errno.EACCES: "change the permissions, or choose a path you may read and write",
    errno.EPERM: "change the permissions, or choose a path you may read and write",
    errno.EISDIR: "give a file path (a new file, or one demix wrote), not a directory",
    errno.EEXIST: "a file stands where demix needs a directory: choose another path, or move that file",
    errno.ENOTDIR: "a file stands where demix needs a directory: choose another path, or move that file",
    errno.ENOENT: "check the path: it, or a directory on the way to it, does not exist",
}
#: Errors of the machine, not of a path, that a user can still mend (a traceback would not help).
USER_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def os_error(exc: OSError, path: str | Path | None = None, action: str = "use") -> DemixError:
    """An OSError as the one-line DemixError the user sees: what failed on which path, and the fix.

    ``path`` is the one the user knows (an atomic write fails on its temporary file); by default
    the error's own filename. The CLI's entry point sends every OSError on a path through here."""
    where = path if path is not None else exc.filename
    reason = exc.strerror or str(exc)
    fix = _OS_FIXES.get(exc.errno or 0, "check the path and its permissions, then run the command again")
    if where is None:  # the library did not say which file (e.g. numpy's writers on a full disk)
        return DemixError(f"{reason} (while writing or reading a file)", fix)
    return DemixError(f"cannot {action} '{where}': {reason}", fix)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through ``write(temporary path)`` then rename, so that readers see the old or
    the new content, never half of it: a full disk or a kill leaves the previous file intact.
    An OSError is a DemixError naming ``path``; a directory at ``path`` is never replaced."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise os_error(exc, path, "write") from exc
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise os_error(exc, path, "write") from exc
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file atomically (see :func:`atomic_write`)."""

    def write(tmp: Path) -> None:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    atomic_write(path, write)


def write_json(path: Path, data: Any) -> None:
    """Atomically write pretty JSON."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


class DuplicateKeyError(ValueError):
    """A JSON object gives the same key twice (json keeps the last one without a word)."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"key '{key}' is given twice")


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKeyError(key)
        out[key] = value
    return out


def loads_json(text: str) -> Any:
    """Parse JSON, refusing an object that gives a key twice (:class:`DuplicateKeyError`, a
    ValueError): demix never writes one, so it is a hand edit that would silently lose a value."""
    return json.loads(text, object_pairs_hook=_refuse_duplicate_keys)


def read_json(path: str | Path) -> Any:
    """Parse a JSON file (errors are the caller's to name: see :func:`read_run_file`)."""
    return json.loads(Path(path).read_text())


def read_run_file(path: str | Path, fix: str) -> Any:
    """Parse a JSON file that demix wrote; a missing, unreadable or garbled one (a key given
    twice included) is a DemixError naming the path and ``fix``."""
    path = Path(path)
    if not path.is_file():
        raise DemixError(f"'{path}' does not exist", fix)
    try:
        return loads_json(path.read_text())
    except DuplicateKeyError as exc:
        # demix never writes a key twice: the file was edited by hand.
        raise DemixError(f"'{path}' cannot be read ({exc})", f"give the key '{exc.key}' once, or {fix}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DemixError(f"'{path}' cannot be read ({exc})", fix) from None


@dataclass(frozen=True)
class RunDir:
    """Paths of one run directory."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # config and logs
    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def log(self) -> Path:
        return self.logs / "demix.log"

    @property
    def timings(self) -> Path:
        return self.root / "timings.json"

    # data
    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def provenance(self) -> Path:
        return self.data / "provenance.json"

    def domain_data(self, domain: str) -> Path:
        return self.data / domain

    def split_meta(self, domain: str, split: str = "train") -> Path:
        """``data/<domain>/<split>.meta.json``: token, document and byte counts of a packed split."""
        return self.data / domain / f"{split}.meta.json"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    # models
    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def base(self) -> Path:
        return self.models / "base"

    def component(self, domain: str) -> Path:
        return self.models / "components" / domain

    def reference(self, mixture_id: str) -> Path:
        return self.models / "references" / mixture_id

    def trained_proxy(self, mixture_id: str) -> Path:
        return self.models / "trained_proxies" / mixture_id

    @property
    def trainer_outputs(self) -> Path:
        """Outputs of the command backend's trainer before conversion to HF checkpoints."""
        return self.models / "_trainer_output"

    @property
    def train_commands(self) -> Path:
        """Rendered commands, data-mixture files and plan of the command backend."""
        return self.root / "train_commands"

    @property
    def train_commands_log(self) -> Path:
        return self.logs / "train_commands.log"

    # search
    @property
    def store_file(self) -> Path:
        return self.root / "store.sqlite"

    @property
    def store_url(self) -> str:
        return f"sqlite:///{self.store_file.resolve()}"

    @property
    def search(self) -> Path:
        return self.root / "search"

    @property
    def checkpoint_hashes(self) -> Path:
        """Cache of the weights hash of each checkpoint the search merges, keyed by its files'
        sizes and modification times (:mod:`demix.search.evidence`): hashing reads every byte."""
        return self.search / "checkpoint_hashes.json"

    def round_dir(self, round_index: int) -> Path:
        """``search/round_<r>``; its files are named in :class:`RoundFiles`."""
        return self.search / f"round_{round_index}"

    def round_files(self, round_index: int) -> RoundFiles:
        return RoundFiles(self.round_dir(round_index))

    @property
    def best_mixture(self) -> Path:
        return self.root / "best_mixture.json"

    # report
    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def report_html(self) -> Path:
        return self.report / "report.html"

    @property
    def report_markdown(self) -> Path:
        return self.report / "report.md"

    @property
    def report_figures(self) -> Path:
        return self.report / "figures"

    # fidelity
    @property
    def fidelity(self) -> Path:
        return self.root / "fidelity"

    @property
    def fidelity_files(self) -> FidelityFiles:
        return FidelityFiles(self.fidelity)

    # evaluation
    @property
    def eval_tasks(self) -> Path:
        """lm-eval tasks written for this run (shipped tasks with their data; see demix.evaluation)."""
        return self.root / "eval" / "tasks"


@dataclass(frozen=True)
class RoundFiles:
    """The files of one search round (``search/round_<r>/``)."""

    root: Path

    @property
    def planned(self) -> Path:
        """The mixtures planned for the round, written before the first evaluation."""
        return self.root / "planned.json"

    @property
    def screening(self) -> Path:
        """With ``search.screening``: each screened proxy's objective and whether it was scored in full."""
        return self.root / "screening.json"

    @property
    def cv(self) -> Path:
        """Cross-validation report of the round's predictors."""
        return self.root / "cv.json"

    @property
    def predictors(self) -> Path:
        return self.root / "predictors"

    @property
    def pool(self) -> Path:
        """The ranked candidate pool (numpy arrays, no pickled objects)."""
        return self.root / "pool.npz"

    @property
    def selection(self) -> Path:
        """Top-k mean and spread after the round."""
        return self.root / "selection.json"

    @property
    def pareto(self) -> Path:
        return self.root / "pareto.csv"


@dataclass(frozen=True)
class FidelityFiles:
    """The files of the fidelity stage (``fidelity/``); docs/fidelity.md says what each holds."""

    root: Path

    @property
    def mixtures(self) -> Path:
        return self.root / "mixtures.json"

    @property
    def scores(self) -> Path:
        return self.root / "scores.json"

    @property
    def compute(self) -> Path:
        return self.root / "compute.json"

    @property
    def audit(self) -> Path:
        return self.root / "audit.json"

    @property
    def results(self) -> Path:
        """``fidelity.json``: reports, baselines, summary, audit warnings."""
        return self.root / "fidelity.json"

    def report(self, proxy_kind: str) -> Path:
        """One proxy kind's report: ``<kind>.json``."""
        return self.root / f"{proxy_kind}.json"


# --------------------------------------------------------------------------- token counts


def _split_counts(run: RunDir, domains: list[str] | tuple[str, ...], key: str) -> dict[str, int]:
    counts = {}
    for d in domains:
        path = run.split_meta(d)
        if not path.is_file():
            raise DemixError(f"no prepared data for domain '{d}' ({path} is missing)", "run `demix prepare` first")
        try:
            counts[d] = int(json.loads(path.read_text())[key])
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise DemixError(f"cannot read the {key} count in '{path}' ({exc})", "rerun `demix prepare`") from None
    return counts


def read_token_counts(run: RunDir, domains: list[str] | tuple[str, ...]) -> dict[str, int]:
    """Train-split token counts per domain, from the packed metadata (``data/<domain>/train.meta.json``)."""
    return _split_counts(run, domains, "tokens")


def read_document_counts(run: RunDir, domains: list[str] | tuple[str, ...]) -> dict[str, int] | None:
    """Train-split document counts per domain, or None when any is unknown (older packs)."""
    try:
        return _split_counts(run, domains, "documents")
    except DemixError:
        return None


# --------------------------------------------------------------------------- timings


@dataclass
class StageTiming:
    """Wall time of one stage in one invocation."""

    stage: str
    seconds: float
    skipped: bool
    detail: dict[str, Any] = field(default_factory=dict)


class TimingsLog:
    """One entry of ``<run>/timings.json`` per invocation, rewritten after every stage, so a
    killed run keeps the times of the stages it finished."""

    def __init__(self, run: RunDir, command: str) -> None:
        self.path = run.timings
        for stale in run.root.glob(f".{self.path.name}.*.tmp"):  # left by a SIGKILL during a write
            stale.unlink(missing_ok=True)
        self.entries = read_timings(run)
        self.entry: dict[str, Any] = {
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": command,
            "finished": False,
            "total_seconds": 0.0,
            "stages": [],
        }
        self.entries.append(self.entry)

    def add(self, timing: StageTiming) -> None:
        self.entry["stages"].append(asdict(timing))
        self.entry["total_seconds"] = round(sum(s["seconds"] for s in self.entry["stages"]), 2)
        write_json(self.path, self.entries)

    def finish(self) -> None:
        self.entry["finished"] = True
        write_json(self.path, self.entries)


def read_timings(run: RunDir) -> list[dict[str, Any]]:
    """Every invocation recorded in ``<run>/timings.json`` (oldest first; empty when none or unreadable)."""
    try:
        data = read_json(run.timings) if run.timings.is_file() else []
    except (OSError, ValueError):
        return []
    return data if isinstance(data, list) else []
