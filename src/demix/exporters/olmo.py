"""OLMo-core's `SourceMixtureDatasetConfig`: a `source_list` with exact ratios, a token budget
and a repetition cap.
"""

from __future__ import annotations

import math
from typing import Any

import yaml

from demix.exporters.base import Export, Exporter, readable_shares, register


def _olmo_sources(x: Export) -> list[dict[str, Any]]:
    """OLMo-core ``SourceMixtureConfig`` dicts: ratios summing to exactly 1, and a repetition
    cap of the planned epochs with headroom (see :attr:`ExportOptions.repetition_headroom`)."""
    items = x.items()
    epochs = x.epochs
    sources = []
    for (d, _, p), ratio in zip(items, readable_shares([w for _, w, _ in items])):
        planned = float(epochs.get(d) or 0.0)
        # Rounded up (never below the plan); at least 1, OLMo-core's minimum.
        rep = max(1.0, math.ceil(planned * (1.0 + x.options.repetition_headroom) * 1e4) / 1e4)
        sources.append({"source_name": d, "target_ratio": ratio, "paths": [p], "max_repetition_ratio": rep})
    return sources


def _olmo_note(x: Export) -> str:
    return (f"# max_repetition_ratio: the data mixture's epochs at requested_tokens x (1 + {x.options.repetition_headroom:g}), "
            "at least 1:\n# OLMo-core counts tokens from the .npy file sizes of its own tokenization, a few percent "
            "off demix's counts\n")


@register
class OlmoCoreExporter(Exporter):
    name = "olmo-core"
    unit = "token share (`target_ratio` is the fraction of requested tokens)"
    suffix = ".yaml"
    description = ("OLMo-core `SourceMixtureDatasetConfig`: `source_list.sources[{source_name, target_ratio, paths, "
                   "max_repetition_ratio}]`, `requested_tokens`, `global_batch_size` (tokens), `seed`")
    trainer = "ai2-olmo-core 3.0.0 `SourceMixtureDatasetConfig.from_yaml` / `from_dict`"
    repetition = ("capped: OLMo-core refuses to build ('Insufficient tokens') beyond max_repetition_ratio, written as the "
                  "planned epochs x (1 + --repetition-headroom)")

    def write(self, x: Export) -> str:
        doc: dict[str, Any] = {"source_list": {"sources": _olmo_sources(x)}}
        tokens = x.require(x.target_tokens, "the token budget (requested_tokens)",
                           "export a best_mixture.json of `demix search` (it records target_tokens)")
        if tokens:
            doc["requested_tokens"] = tokens
        gbs = x.require(x.options.global_batch_tokens, "--global-batch-tokens (OLMo-core's global_batch_size, in tokens)",
                        "pass --global-batch-tokens N: sequences per global batch x sequence length")
        if gbs:
            doc["global_batch_size"] = gbs
        doc["seed"] = x.options.seed
        load = "# load: SourceMixtureDatasetConfig.from_yaml(FILE); in a training config, the dataset's source_mixture_config\n"
        return x.header(self.name) + load + _olmo_note(x) + yaml.safe_dump(doc, sort_keys=False)


@register
class OlmoCoreSourcesExporter(Exporter):
    name = "olmo-core-sources"
    unit = "token share (`target_ratio` is the fraction of requested tokens)"
    suffix = ".yaml"
    description = "OLMo-core `SourceMixtureList`: `sources: [{source_name, target_ratio, paths, max_repetition_ratio}]`"
    trainer = "ai2-olmo-core 3.0.0 `SourceMixtureList.from_yaml`"
    repetition = OlmoCoreExporter.repetition

    def write(self, x: Export) -> str:
        load = ("# load: SourceMixtureList.from_yaml(FILE), then "
                "SourceMixtureDatasetConfig(source_list=..., requested_tokens, global_batch_size)\n")
        return x.header(self.name) + load + _olmo_note(x) + yaml.safe_dump({"sources": _olmo_sources(x)}, sort_keys=False)
