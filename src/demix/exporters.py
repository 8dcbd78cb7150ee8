"""Exporters: the chosen mixture (``best_mixture.json``) in the format each trainer reads.

What is exported is the **data mixture** by default (``best.mixture("data")``): the token shares
of the training data the winning proxies stand for, what a user trains on. ``--weights
components`` exports the **component weights** instead (the merge coefficients of the proxies),
for users who know why; every file that can hold a comment starts with one saying which of the
two it holds, and ``demix export`` says it in its message. Token counts and epochs written by
any format come from the data mixture.

Every exporter states the unit of the numbers it writes:

- *token share*: the fraction of training tokens drawn from a domain (a data mixture).
  Trainers that sample fixed-length sequences (Megatron, NeMo, nanotron, OLMo-core, MosaicML
  streams of concatenated tokens) take token shares directly.
- *document probability*: the chance that the next example comes from a domain, where an
  example is one document (HF ``interleave_datasets``). Converted from the data mixture's token
  shares with the mean document length: p_d is proportional to data_d / mean_tokens_per_document_d.

Data locations are given per domain (``--data-prefix general=/data/general_text_document``);
without one the domain name stands in, for the user to replace.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import yaml

from demix.errors import DemixError
from demix.search.files import BestMixture

#: ``demix export --weights``: the data mixture (what to train on, the default) or the component weights.
DATA = "data"
COMPONENTS = "components"
WEIGHT_KINDS = (DATA, COMPONENTS)

_REGISTRY: dict[str, type[Exporter]] = {}


def register(cls: type[Exporter]) -> type[Exporter]:
    """Class decorator: make an exporter available by its ``name``."""
    _REGISTRY[cls.name] = cls
    return cls


def exporter_names() -> list[str]:
    """Names accepted by ``demix export --to``."""
    return list(_REGISTRY)


def get_exporter(name: str) -> Exporter:
    """The exporter called ``name``; DemixError for an unknown one."""
    if name not in _REGISTRY:
        raise DemixError(f"unknown export format '{name}'", f"choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]()


def check_weights_kind(which: str) -> str:
    """``which`` when it is one of :data:`WEIGHT_KINDS`; else a DemixError naming ``--weights``."""
    if which not in WEIGHT_KINDS:
        raise DemixError(
            f"--weights is '{which}', not one of {', '.join(WEIGHT_KINDS)}",
            "use --weights data (the data mixture to train on, the default) or --weights components "
            "(the merge coefficients of the proxies)",
        )
    return which


def mixture_label(which: str) -> str:
    """What the exported numbers are, in one line (the files' header comment, the CLI's message)."""
    if check_weights_kind(which) == COMPONENTS:
        return ("component weights: the merge coefficients of the proxies, NOT token shares of training data "
                "(export the data mixture to train on with --weights data, the default)")
    return "data mixture: token shares of the training data (fraction of training tokens drawn from each domain)"


def load_best_mixture(path: str | Path) -> BestMixture:
    """Read a ``best_mixture.json`` (a file, or a run directory's)."""
    from demix.rundir import RunDir

    path = Path(path)
    return BestMixture.read(RunDir(path).best_mixture if path.is_dir() else path)


def exported_mixture(best: BestMixture, which: str = DATA) -> dict[str, float]:
    """The mixture ``which`` of ``best`` (:meth:`BestMixture.mixture`: a file of demix < 0.2 has
    no data mixture and says so), checked: non-negative weights summing to 1."""
    from demix.mixtures import validate_mixture

    weights = best.mixture(check_weights_kind(which))
    try:
        return validate_mixture(weights, list(weights))
    except DemixError as exc:
        kind = "data mixture" if which == DATA else "component weights"
        where = f"'{best.path}'" if best.path else "best_mixture.json"
        raise DemixError(f"the {kind} of {where}: {exc.what}", exc.fix) from None


def parse_prefixes(items: list[str] | None, domains: list[str]) -> dict[str, str]:
    """``["general=/data/general", ...]`` -> ``{domain: prefix}``; unknown domains, and a domain
    given twice (the last would win without a word), are errors."""
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, prefix = item.partition("=")
        if not sep or not prefix:
            raise DemixError(f"--data-prefix '{item}' is not DOMAIN=PATH", "write e.g. --data-prefix general=/data/general_text_document")
        if name not in domains:
            raise DemixError(f"--data-prefix names unknown domain '{name}'", f"use one of {domains}")
        if name in out:
            raise DemixError(
                f"--data-prefix gives domain '{name}' twice ({name}={out[name]} and {item})", "give each domain's data path once"
            )
        out[name] = prefix
    return out


@dataclass(frozen=True)
class Export:
    """What one exporter renders: the mixture chosen by ``which``, the file it came from, and
    where each domain's data is."""

    best: BestMixture
    weights: dict[str, float]
    """The exported mixture: the data mixture (``which == "data"``) or the component weights."""
    which: str
    prefixes: Mapping[str, str]

    def items(self, keep_zero: bool = False) -> list[tuple[str, float, str]]:
        """(domain, weight, data prefix) in domain order."""
        # Domains with weight 0 are left out: several trainers reject zero weights.
        return [(d, float(w), self.prefixes.get(d, d)) for d, w in self.weights.items() if keep_zero or w > 0]

    @property
    def epochs(self) -> dict[str, float | None]:
        """Passes over each domain's data at the target budget, of the data mixture whichever
        mixture is exported; empty for a file of demix < 0.2 (its epochs were computed from the
        component weights, as if they were token shares)."""
        return {} if self.best.legacy else dict(self.best.epochs or {})

    def header(self, fmt: str) -> str:
        """Comment lines (``#``) saying what the numbers are: for formats that take comments."""
        return f"# demix export ({fmt}): {mixture_label(self.which)}\n"


class Exporter:
    """Base: ``render(best, prefixes, which)`` returns the file content; subclasses implement
    :meth:`write` on the :class:`Export` it builds."""

    name: ClassVar[str]
    unit: ClassVar[str]
    """The unit of the data mixture in this format."""
    suffix: ClassVar[str]
    description: ClassVar[str]

    def render(self, best: BestMixture, prefixes: Mapping[str, str], which: str = DATA) -> str:
        """The file content of ``best``'s data mixture (``which="data"``, the default) or of its
        component weights (``"components"``)."""
        return self.write(Export(best, exported_mixture(best, which), which, prefixes))

    def unit_of(self, which: str = DATA) -> str:
        """The unit of the numbers written for ``which``."""
        if check_weights_kind(which) == COMPONENTS:
            return "component weight (a merge coefficient, written where the format takes a token share)"
        return self.unit

    def write(self, x: Export) -> str:  # pragma: no cover - abstract
        raise NotImplementedError


def _num(x: float) -> float:
    return float(f"{x:.6g}")


@register
class JsonExporter(Exporter):
    name = "json"
    unit = "token share"
    suffix = ".json"
    description = "plain {domain: token share} (JSON takes no comment: `demix export` says which mixture it wrote)"

    def write(self, x: Export) -> str:
        return json.dumps({d: _num(w) for d, w, _ in x.items(keep_zero=True)}, indent=2) + "\n"


@register
class MegatronExporter(Exporter):
    name = "megatron"
    unit = "token share (Megatron samples fixed-length sequences, so sample share = token share)"
    suffix = ".txt"
    # No comment line: Megatron reads the file as whitespace-separated arguments (--data-args-path).
    description = "Megatron-LM `--data-path` weight/prefix pairs (one line, no comment: `demix export` says which mixture it wrote)"

    def write(self, x: Export) -> str:
        pairs = " ".join(f"{_num(w)} {p}" for _, w, p in x.items())
        return f"--data-path {pairs}\n"


@register
class NemoExporter(Exporter):
    name = "nemo"
    unit = "token share (NeMo's Megatron blended dataset samples fixed-length sequences)"
    suffix = ".yaml"
    description = "NeMo `model.data.data_prefix` list [weight, path, ...]"

    def write(self, x: Export) -> str:
        flat: list[Any] = []
        for _, w, p in x.items():
            flat += [_num(w), p]
        return x.header(self.name) + yaml.safe_dump({"model": {"data": {"data_prefix": flat}}}, sort_keys=False)


@register
class NanotronExporter(Exporter):
    name = "nanotron"
    unit = "token share (nanotron Nanoset weights over fixed-length sequences)"
    suffix = ".yaml"
    description = "nanotron `data_stages` with `dataset_folder` and `dataset_weights`"

    def write(self, x: Export) -> str:
        items = x.items()
        stage = {
            "name": "demix mixture",
            "start_training_step": 1,
            "data": {
                "dataset": {"dataset_folder": [p for _, _, p in items], "dataset_weights": [_num(w) for _, w, _ in items]},
                "seed": 42,
            },
        }
        return x.header(self.name) + yaml.safe_dump({"data_stages": [stage]}, sort_keys=False)


@register
class OlmoCoreExporter(Exporter):
    name = "olmo-core"
    unit = "token share (`target_ratio` is the fraction of requested tokens)"
    suffix = ".yaml"
    description = "OLMo-core source mixture: source_configs with target_ratio and max_repetition_ratio"

    def write(self, x: Export) -> str:
        epochs = x.epochs
        sources = []
        items = x.items()
        # OLMo-core checks that target ratios sum to exactly 1.0 (float ==): the largest ratio
        # takes the rounding remainder, where it changes the fewest digits.
        ratios = [_num(w) for _, w, _ in items]
        big = ratios.index(max(ratios))
        ratios[big] = 0.0
        ratios[big] = round(1.0 - sum(ratios), 12)
        if sum(ratios) != 1.0:
            ratios[big] = 1.0 - sum(r for i, r in enumerate(ratios) if i != big)
        for (d, _, p), ratio in zip(items, ratios):
            # The trainer refuses to repeat a source more than max_repetition_ratio times;
            # allow what the data mixture needs (its epochs at the target budget), at least 1.
            rep = max(1.0, float(epochs.get(d) or 1.0))
            sources.append({"source_name": d, "target_ratio": ratio, "paths": [p], "max_repetition_ratio": _num(rep * 1.0001)})
        mix: dict[str, Any] = {"source_configs": sources}
        if x.best.target_tokens:
            mix["requested_tokens"] = int(x.best.target_tokens)
        note = "# max_repetition_ratio: epochs of the data mixture at requested_tokens (at least 1)\n"
        return x.header(self.name) + note + yaml.safe_dump({"source_mixture_config": mix}, sort_keys=False)


@register
class HfDatasetsExporter(Exporter):
    name = "hf-datasets"
    unit = "document probability (interleave_datasets picks one example = one document at a time)"
    suffix = ".json"
    description = ("`datasets.interleave_datasets(probabilities=...)`, the data mixture's token shares converted "
                   "with the mean document length")

    def write(self, x: Export) -> str:
        if x.which != DATA:
            # Document probabilities convert token shares of the training data; merge coefficients are none.
            raise DemixError(
                "hf-datasets writes document probabilities converted from the data mixture's token shares; "
                "component weights are merge coefficients, not token shares",
                "export the data mixture (--weights data, the default)",
            )
        mean_len = x.best.mean_document_tokens
        if not mean_len:
            raise DemixError(
                "best_mixture.json has no mean_document_tokens, needed to turn token shares into document probabilities",
                "rerun `demix search` on a prepared run directory (it reads data/<domain>/train.meta.json)",
            )
        items = x.items()
        raw = {d: w / float(mean_len[d]) for d, w, _ in items}
        total = sum(raw.values())
        return json.dumps(
            {
                "datasets": [p for _, _, p in items],
                "probabilities": [_num(raw[d] / total) for d, _, _ in items],
                "stopping_strategy": "all_exhausted",
                "unit": "document probability",
                "mixture": "data mixture",
                "token_shares": [_num(w) for _, w, _ in items],
                "mean_document_tokens": [_num(float(mean_len[d])) for d, _, _ in items],
            },
            indent=2,
        ) + "\n"


@register
class MosaicExporter(Exporter):
    name = "mosaic"
    unit = "token share as stream `proportion` (MDS shards of concatenated fixed-length token samples)"
    suffix = ".yaml"
    description = "MosaicML streaming / LLM Foundry `train_loader.dataset.streams` with proportions"

    def write(self, x: Export) -> str:
        streams = {d: {"local": p, "proportion": _num(w)} for d, w, p in x.items()}
        return x.header(self.name) + yaml.safe_dump({"train_loader": {"dataset": {"streams": streams}}}, sort_keys=False)


def export(best_path: str | Path, fmt: str, prefixes: list[str] | None = None, weights: str = DATA) -> str:
    """Render ``best_mixture.json`` (a file or a run directory) in format ``fmt``: its data
    mixture (``weights="data"``, the default) or its component weights (``"components"``)."""
    check_weights_kind(weights)
    exporter = get_exporter(fmt)
    best = load_best_mixture(best_path)
    return exporter.render(best, parse_prefixes(prefixes, best.domains), weights)
