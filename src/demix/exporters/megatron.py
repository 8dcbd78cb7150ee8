"""Megatron-style blends over fixed-length token-file samples: Megatron-LM (a `--data-path` list,
per-split JSON), Megatron-Bridge, NeMo 2 and NeMo 1, and nanotron's Nanoset (weights over
tokenised folders, the same sampling).
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from demix.exporters.base import Export, Exporter, mixture_label, readable, register

MEGATRON_SPLIT = "100,0,0"


def _megatron_notes(x: Export, flag: str) -> list[str]:
    samples = f" --train-samples {x.samples}" if x.samples else " --train-samples N (pass --seq-length for N)"
    seq = f" --seq-length {x.options.seq_length}" if x.options.seq_length else ""
    split = f" --split {MEGATRON_SPLIT}" if flag == "--data-args-path" else ""
    return [f"Megatron-LM: {flag} FILE{split}{samples}{seq}"]


@register
class MegatronExporter(Exporter):
    name = "megatron"
    unit = "token share (Megatron samples fixed-length sequences, so sample share = token share)"
    suffix = ".txt"
    # No comment line: Megatron reads the file as whitespace-separated arguments (--data-args-path).
    description = ("Megatron weight/prefix pairs `W1 P1 W2 P2 ...` for `--data-args-path FILE` and `--data-path $(cat FILE)` "
                   "(one line, no comment: `demix export` says which mixture it wrote and the --split / --train-samples to use)")
    trainer = "Megatron-LM / megatron-core 0.16.1 (`get_blend_from_list(open(FILE).read().split())`)"
    repetition = "not capped: GPTDataset repeats a prefix as many epochs as its samples need"

    def write(self, x: Export) -> str:
        return " ".join(f"{readable(w)} {p}" for _, w, p in x.items()) + "\n"

    def notes(self, x: Export) -> list[str]:
        return _megatron_notes(x, "--data-args-path") + ["or --data-path $(cat FILE); Megatron-Bridge reads the same file"]


@register
class MegatronPerSplitExporter(Exporter):
    name = "megatron-per-split"
    unit = "token share (the train blend; Megatron samples fixed-length sequences)"
    suffix = ".json"
    description = ("JSON for Megatron's `--per-split-data-args-path`: `train` the weight/prefix pairs, `valid` / `test` null "
                   "(fill in held-out prefixes), `demix` notes that Megatron ignores")
    trainer = "Megatron-LM / Megatron-Bridge 0.3.1 `get_blend_and_blend_per_split` (megatron-core 0.16.1 blends)"
    repetition = "not capped: GPTDataset repeats a prefix as many epochs as its samples need"

    def write(self, x: Export) -> str:
        pairs = " ".join(f"{readable(w)} {p}" for _, w, p in x.items())
        notes: dict[str, Any] = {
            "mixture": mixture_label(x.which),
            "valid_test": "null builds no validation / test set; give held-out prefixes (weights optional) to evaluate",
        }
        if x.samples:
            notes["train_samples"] = x.samples
        # Megatron reads only train / valid / test; "demix" rides along for the reader.
        return json.dumps({"train": pairs, "valid": None, "test": None, "demix": notes}, indent=2) + "\n"

    def notes(self, x: Export) -> list[str]:
        return _megatron_notes(x, "--per-split-data-args-path")


@register
class MegatronBridgeExporter(Exporter):
    name = "megatron-bridge"
    unit = "token share (`dataset.blend` weights over fixed-length sequences)"
    suffix = ".yaml"
    description = ("Megatron-Bridge ConfigContainer overrides (`--config-file`): `dataset.blend: [[prefixes], [weights]]`, "
                   "`dataset.split`, `dataset.random_seed`, with --seq-length `dataset.seq_length` and `train.train_samples`")
    trainer = "Megatron-Bridge 0.3.1 `GPTDatasetConfig` (its base, megatron-core 0.16.1 `GPTDatasetConfig`, checked)"
    repetition = "not capped: GPTDataset repeats a prefix as many epochs as its samples need"

    def write(self, x: Export) -> str:
        items = x.items()
        dataset: dict[str, Any] = {
            "blend": [[p for _, _, p in items], [readable(w) for _, w, _ in items]],
            "split": MEGATRON_SPLIT,
            "random_seed": x.options.seed,
        }
        if x.options.seq_length:
            dataset["seq_length"] = x.options.seq_length
        doc: dict[str, Any] = {"dataset": dataset}
        if x.samples:
            # Sample-based training: Bridge refuses train_iters and train_samples together.
            doc["train"] = {"train_iters": None, "train_samples": x.samples}
        note = (f"# split {MEGATRON_SPLIT}: demix counted every token of a domain as training data\n"
                "# sample-based training also wants scheduler.lr_decay_samples / lr_warmup_samples, not *_iters\n")
        return x.header(self.name) + note + yaml.safe_dump(doc, sort_keys=False)


@register
class Nemo2Exporter(Exporter):
    name = "nemo2"
    unit = "token share (NeMo's Megatron blended dataset samples fixed-length sequences)"
    suffix = ".yaml"
    description = ("NeMo 2 `llm.PreTrainingDataModule` arguments under `data` (with `_target_`): `paths: [W1, P1, ...]`, "
                   "`split`, `seed`, with --seq-length `seq_length` / `num_train_samples`, with --global-batch-tokens `global_batch_size`")
    trainer = "nemo-toolkit 2.7.3 `nemo.collections.llm.PreTrainingDataModule` (its blend through megatron-core 0.16.1)"
    repetition = "not capped: GPTDataset repeats a prefix as many epochs as its samples need"

    def write(self, x: Export) -> str:
        flat: list[Any] = []
        for _, w, p in x.items():
            flat += [readable(w), p]
        data: dict[str, Any] = {
            "_target_": "nemo.collections.llm.gpt.data.pre_training.PreTrainingDataModule",
            "paths": flat,
            "split": MEGATRON_SPLIT,
            "seed": x.options.seed,
        }
        opts = x.options
        if opts.seq_length:
            data["seq_length"] = opts.seq_length
            if opts.global_batch_tokens:
                data["global_batch_size"] = opts.global_batch_tokens // opts.seq_length
            data["num_train_samples"] = x.samples
        return x.header(self.name) + yaml.safe_dump({"data": data}, sort_keys=False)


@register
class Nemo1Exporter(Exporter):
    name = "nemo1"
    unit = "token share (NeMo's Megatron blended dataset samples fixed-length sequences)"
    suffix = ".yaml"
    description = "NeMo 1 (nemo-toolkit < 2, MegatronGPTModel YAML) `model.data.data_prefix` list [weight, path, ...]"
    trainer = "NeMo 1 (nemo-toolkit 1.x `megatron_gpt_config.yaml`; its blend through megatron-core 0.16.1)"
    repetition = "not capped: the Megatron dataset repeats a prefix as many epochs as its samples need"

    def write(self, x: Export) -> str:
        flat: list[Any] = []
        for _, w, p in x.items():
            flat += [readable(w), p]
        data = {"data_prefix": flat, "splits_string": MEGATRON_SPLIT}
        return x.header(self.name) + yaml.safe_dump({"model": {"data": data}}, sort_keys=False)


@register
class NanotronExporter(Exporter):
    name = "nanotron"
    unit = "token share (nanotron Nanoset weights over fixed-length sequences)"
    suffix = ".yaml"
    description = "nanotron `data_stages` with `dataset_folder` and `dataset_weights`"
    trainer = "nanotron main branch (`NanosetDatasetsArgs`; the 0.4 release on PyPI predates Nanosets)"
    repetition = "not capped: Nanoset repeats a folder as many epochs as its samples need"

    def write(self, x: Export) -> str:
        items = x.items()
        stage = {
            "name": "demix mixture",
            "start_training_step": 1,
            "data": {
                "dataset": {"dataset_folder": [p for _, _, p in items], "dataset_weights": [readable(w) for _, w, _ in items]},
                "seed": x.options.seed,
            },
        }
        return x.header(self.name) + yaml.safe_dump({"data_stages": [stage]}, sort_keys=False)
