"""Exporters: the chosen mixture (``best_mixture.json``) in the format each trainer reads.

Every exporter states the unit of the numbers it writes:

- *token share*: the fraction of training tokens drawn from a domain (what demix searches).
  Trainers that sample fixed-length sequences (Megatron, NeMo, nanotron, OLMo-core, MosaicML
  streams of concatenated tokens) take token shares directly.
- *document probability*: the chance that the next example comes from a domain, where an
  example is one document (HF ``interleave_datasets``). Converted from token shares with the
  mean document length: p_d is proportional to w_d / mean_tokens_per_document_d.

Data locations are given per domain (``--data-prefix general=/data/general_text_document``);
without one the domain name stands in, for the user to replace.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import yaml

from demix.errors import DemixError
from demix.search.files import BestMixture

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


def load_best_mixture(path: str | Path) -> BestMixture:
    """Read a ``best_mixture.json`` (or a run directory's) and check its weights: non-negative
    token shares summing to 1."""
    from demix.mixtures import validate_mixture
    from demix.rundir import RunDir

    path = Path(path)
    best = BestMixture.read(RunDir(path).best_mixture if path.is_dir() else path)
    best.weights = validate_mixture(best.weights, list(best.weights))
    return best


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


class Exporter:
    """Base: ``render(best, prefixes)`` returns the file content."""

    name: ClassVar[str]
    unit: ClassVar[str]
    suffix: ClassVar[str]
    description: ClassVar[str]

    def render(self, best: BestMixture, prefixes: Mapping[str, str]) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def _items(best: BestMixture, prefixes: Mapping[str, str], keep_zero: bool = False) -> list[tuple[str, float, str]]:
        # Domains with weight 0 are left out: several trainers reject zero weights.
        return [(d, float(w), prefixes.get(d, d)) for d, w in best.weights.items() if keep_zero or w > 0]


def _num(x: float) -> float:
    return float(f"{x:.6g}")


@register
class JsonExporter(Exporter):
    name = "json"
    unit = "token share"
    suffix = ".json"
    description = "plain {domain: token share}"

    def render(self, best, prefixes):
        return json.dumps({d: _num(w) for d, w, _ in self._items(best, prefixes, keep_zero=True)}, indent=2) + "\n"


@register
class MegatronExporter(Exporter):
    name = "megatron"
    unit = "token share (Megatron samples fixed-length sequences, so sample share = token share)"
    suffix = ".txt"
    description = "Megatron-LM `--data-path` weight/prefix pairs"

    def render(self, best, prefixes):
        pairs = " ".join(f"{_num(w)} {p}" for _, w, p in self._items(best, prefixes))
        return f"--data-path {pairs}\n"


@register
class NemoExporter(Exporter):
    name = "nemo"
    unit = "token share (NeMo's Megatron blended dataset samples fixed-length sequences)"
    suffix = ".yaml"
    description = "NeMo `model.data.data_prefix` list [weight, path, ...]"

    def render(self, best, prefixes):
        flat: list[Any] = []
        for _, w, p in self._items(best, prefixes):
            flat += [_num(w), p]
        return yaml.safe_dump({"model": {"data": {"data_prefix": flat}}}, sort_keys=False)


@register
class NanotronExporter(Exporter):
    name = "nanotron"
    unit = "token share (nanotron Nanoset weights over fixed-length sequences)"
    suffix = ".yaml"
    description = "nanotron `data_stages` with `dataset_folder` and `dataset_weights`"

    def render(self, best, prefixes):
        items = self._items(best, prefixes)
        stage = {
            "name": "demix mixture",
            "start_training_step": 1,
            "data": {
                "dataset": {"dataset_folder": [p for _, _, p in items], "dataset_weights": [_num(w) for _, w, _ in items]},
                "seed": 42,
            },
        }
        return yaml.safe_dump({"data_stages": [stage]}, sort_keys=False)


@register
class OlmoCoreExporter(Exporter):
    name = "olmo-core"
    unit = "token share (`target_ratio` is the fraction of requested tokens)"
    suffix = ".yaml"
    description = "OLMo-core source mixture: source_configs with target_ratio and max_repetition_ratio"

    def render(self, best, prefixes):
        epochs = best.epochs or {}
        sources = []
        items = self._items(best, prefixes)
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
            # allow what the mixture needs (epochs at the target budget), at least 1.
            rep = max(1.0, float(epochs.get(d) or 1.0))
            sources.append({"source_name": d, "target_ratio": ratio, "paths": [p], "max_repetition_ratio": _num(rep * 1.0001)})
        mix: dict[str, Any] = {"source_configs": sources}
        if best.target_tokens:
            mix["requested_tokens"] = int(best.target_tokens)
        return yaml.safe_dump({"source_mixture_config": mix}, sort_keys=False)


@register
class HfDatasetsExporter(Exporter):
    name = "hf-datasets"
    unit = "document probability (interleave_datasets picks one example = one document at a time)"
    suffix = ".json"
    description = "`datasets.interleave_datasets(probabilities=...)`, token shares converted with the mean document length"

    def render(self, best, prefixes):
        mean_len = best.mean_document_tokens
        if not mean_len:
            raise DemixError(
                "best_mixture.json has no mean_document_tokens, needed to turn token shares into document probabilities",
                "rerun `demix search` on a prepared run directory (it reads data/<domain>/train.meta.json)",
            )
        items = self._items(best, prefixes)
        raw = {d: w / float(mean_len[d]) for d, w, _ in items}
        total = sum(raw.values())
        return json.dumps(
            {
                "datasets": [p for _, _, p in items],
                "probabilities": [_num(raw[d] / total) for d, _, _ in items],
                "stopping_strategy": "all_exhausted",
                "unit": "document probability",
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

    def render(self, best, prefixes):
        streams = {d: {"local": p, "proportion": _num(w)} for d, w, p in self._items(best, prefixes)}
        return yaml.safe_dump({"train_loader": {"dataset": {"streams": streams}}}, sort_keys=False)


def export(best_path: str | Path, fmt: str, prefixes: list[str] | None = None) -> str:
    """Render ``best_mixture.json`` (a file or a run directory) in format ``fmt``."""
    best = load_best_mixture(best_path)
    exporter = get_exporter(fmt)
    return exporter.render(best, parse_prefixes(prefixes, best.domains))
