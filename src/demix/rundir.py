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
    <run>/search/round_<r>/           candidate pool, predictor fits, CV report per round
    <run>/best_mixture.json           the chosen mixture
    <run>/report/                     report.html, report.md, figures/
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file so that readers see the old or the new content, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    """Atomically write pretty JSON."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


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
    def log(self) -> Path:
        return self.root / "logs" / "demix.log"

    # data
    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def provenance(self) -> Path:
        return self.data / "provenance.json"

    def domain_data(self, domain: str) -> Path:
        return self.data / domain

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

    # search
    @property
    def store_url(self) -> str:
        return f"sqlite:///{(self.root / 'store.sqlite').resolve()}"

    def round_dir(self, round_index: int) -> Path:
        return self.root / "search" / f"round_{round_index}"

    @property
    def best_mixture(self) -> Path:
        return self.root / "best_mixture.json"

    # report
    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def fidelity(self) -> Path:
        return self.root / "fidelity"

    # evaluation
    @property
    def eval_tasks(self) -> Path:
        """lm-eval tasks written for this run (shipped tasks with their data; see demix.evaluation)."""
        return self.root / "eval" / "tasks"
