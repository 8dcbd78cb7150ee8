"""Loaders that stream examples from several sources: HF `datasets.interleave_datasets` (document
probabilities), MosaicML streaming, litdata and torchtitan.
"""

from __future__ import annotations

import json
import math
from typing import Any

import yaml

from demix.errors import DemixError
from demix.exporters.base import DATA, Export, Exporter, mixture_label, readable, register, sum_to_one


@register
class HfDatasetsExporter(Exporter):
    name = "hf-datasets"
    unit = "document probability (interleave_datasets picks one example = one document at a time)"
    suffix = ".json"
    description = ("`datasets.interleave_datasets(dsets, **file['interleave_datasets'])`: probabilities converted from the "
                   "data mixture's token shares with the mean document length (summing to exactly 1), seed, stopping "
                   "strategy; `examples`, the documents of the token budget")
    trainer = "datasets 5.2.0 `interleave_datasets`"
    repetition = ("first_exhausted when no domain needs a second pass (the run stops before any repeats), else all_exhausted, "
                  "which repeats every domain as often as the longest needs")

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
        raw = [w / float(mean_len[d]) for d, w, _ in items]
        # Full float64 digits: 6-digit rounding broke numpy's sum-to-1 check for most mixtures.
        probabilities = sum_to_one(raw)
        repeats = any((x.epochs.get(d) or 0.0) > 1 for d, _, _ in items)
        tokens = x.target_tokens
        return json.dumps(
            {
                "datasets": [p for _, _, p in items],
                "interleave_datasets": {
                    "probabilities": probabilities,
                    "seed": x.options.seed,
                    "stopping_strategy": "all_exhausted" if repeats else "first_exhausted",
                },
                "examples": round(tokens * math.fsum(raw)) if tokens else None,
                "unit": "document probability",
                "mixture": "data mixture",
                "target_tokens": tokens,
                "token_shares": [readable(w) for _, w, _ in items],
                "mean_document_tokens": [readable(float(mean_len[d])) for d, _, _ in items],
            },
            indent=2,
        ) + "\n"

    def notes(self, x: Export) -> list[str]:
        return ["interleave_datasets(dsets, **cfg['interleave_datasets']), then the first cfg['examples'] examples "
                "(.take(n) streaming, .select(range(n)) in memory): the token budget"]


@register
class MosaicExporter(Exporter):
    name = "mosaic"
    unit = "token share as stream `proportion` (MDS shards of concatenated fixed-length token samples)"
    suffix = ".yaml"
    description = ("MosaicML streaming / LLM Foundry `train_loader.dataset`: `streams.<domain>.{local, proportion}`, "
                   "`epoch_size` (samples of the budget), `shuffle_seed`")
    trainer = "mosaicml-streaming 0.13.0 `StreamingDataset(streams=[Stream(...)], epoch_size=...)`"
    repetition = "as planned: epoch_size x proportion samples per stream, repeating a stream only as much as the plan needs"

    def write(self, x: Export) -> str:
        items = x.items()
        x.require(x.options.seq_length, "--seq-length (to turn the token budget into epoch_size samples)",
                  "pass --seq-length N, the max_seq_len of the --concat_tokens shards")
        x.require(x.target_tokens, "the token budget (for epoch_size)",
                  "export a best_mixture.json of `demix search` (it records target_tokens)")
        dataset: dict[str, Any] = {"streams": {d: {"local": p, "proportion": readable(w)} for d, w, p in items}}
        if x.samples:
            # Without epoch_size an epoch is the corpus size and repetition follows it, not the plan.
            dataset["epoch_size"] = x.samples
        dataset["shuffle_seed"] = x.options.seed
        return x.header(self.name) + yaml.safe_dump({"train_loader": {"dataset": dataset}}, sort_keys=False)


@register
class LitdataExporter(Exporter):
    name = "litdata"
    unit = "token share (`TokensLoader` samples fixed-length blocks, as litgpt pretraining does)"
    suffix = ".json"
    description = ("litdata / litgpt `CombinedStreamingDataset([StreamingDataset(d) for d in file['input_dirs']], "
                   "**file['combined_streaming_dataset'])`: weights, seed, iterate_over_all false")
    trainer = "litdata 0.2.76 `CombinedStreamingDataset`"
    repetition = ("no repetition: iterate_over_all false stops at the first exhausted domain, so a domain that needs more than "
                  "one pass ends the run early")

    def write(self, x: Export) -> str:
        items = x.items()
        doc: dict[str, Any] = {
            "input_dirs": [p for _, _, p in items],
            "combined_streaming_dataset": {"weights": [readable(w) for _, w, _ in items], "seed": x.options.seed,
                                           "iterate_over_all": False},
            "unit": "token share",
            "mixture": mixture_label(x.which),
        }
        if x.samples:
            doc["samples"] = x.samples
        return json.dumps(doc, indent=2) + "\n"


@register
class TorchtitanExporter(Exporter):
    name = "torchtitan"
    unit = "token share (each source yields packed seq_len sequences)"
    suffix = ".json"
    description = ("torchtitan `InterleavedHuggingFaceTextDataLoader.Config(sources=[HFDataSource(**s) for s in "
                   "file['sources']], seed=..., stopping_strategy=...)`; each `dataset` is a name registered in "
                   "`torchtitan.hf_datasets.text_datasets.DATASETS`")
    trainer = "torchtitan 0.3.0 `InterleavedHuggingFaceTextDataLoader.Config` / `InterleavedDataset`"
    repetition = ("on_first_exhausted with finite sources when no domain needs a second pass, else infinite sources "
                  "(repeated without a word)")

    def write(self, x: Export) -> str:
        items = x.items()
        repeats = any((x.epochs.get(d) or 0.0) > 1 for d, _, _ in items)
        sources = [{"dataset": d, "dataset_path": p, "weight": readable(w), "infinite": repeats} for d, w, p in items]
        return json.dumps({"sources": sources, "seed": x.options.seed, "stopping_strategy": "on_first_exhausted",
                           "unit": "token share", "mixture": mixture_label(x.which)}, indent=2) + "\n"
