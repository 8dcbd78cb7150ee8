"""Load demix's exports with the trainers' own classes; run by the trainers venv's Python.

    .venv-trainers/bin/python tests/exporters/trainer_check.py JOBS.json

``JOBS.json`` is a list of jobs ``{"kind": ..., "file": EXPORT, ...}``; each builds tiny data of
the sizes it is given at the paths the export names (Megatron .bin/.idx, OLMo-core .npy token
files, MDS shards, litdata chunks, in-memory HF datasets), loads the export as the trainer does
and reports what the trainer made of it: the realised share of each domain (of samples, tokens
or examples) and whatever else the job asks. One line ``DEMIX_TRAINER_CHECK <json>`` is printed:
a list of results in job order, each ``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``.

It imports no demix (the trainers venv has none) and nothing of the trainers is replaced: the
only code of ours is the data writer and the loop that counts where each sample came from.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import sys
import tempfile
import traceback
import types
import warnings
from pathlib import Path
from typing import Any

import numpy as np

warnings.filterwarnings("ignore")  # Megatron warns at import that Transformer Engine is absent (CPU)


# --------------------------------------------------------------------------- Megatron family


def _megatron_data(prefixes: dict[str, str], tokens: dict[str, int]) -> None:
    """One indexed dataset (.bin/.idx) per domain of ``tokens[d]`` tokens in 50-token documents."""
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(0)
    for d, n in tokens.items():
        Path(prefixes[d]).parent.mkdir(parents=True, exist_ok=True)
        builder = IndexedDatasetBuilder(prefixes[d] + ".bin", dtype=np.uint16)
        left = n
        while left > 0:
            k = min(left, 50)
            builder.add_item(torch.from_numpy(rng.integers(0, 100, k).astype(np.int64)))
            builder.end_document()
            left -= k
        builder.finalize(prefixes[d] + ".idx")


def _megatron_build(blend: Any, blend_per_split: Any, split: str | None, seq: int, samples: int, seed: int) -> dict[str, Any]:
    """megatron-core's GPTDataset blend built as Megatron-LM / Bridge / NeMo build it; the share
    of samples each prefix got and the epochs its GPTDataset holds."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
    from megatron.core.tokenizers import MegatronTokenizer

    tokenizer = MegatronTokenizer.from_pretrained(metadata_path={"library": "null"}, vocab_size=128)
    # path_to_cache None: the index is built in memory (no torch.distributed group on one CPU process).
    config = GPTDatasetConfig(random_seed=seed, sequence_length=seq, blend=blend, blend_per_split=blend_per_split,
                              split=split, tokenizer=tokenizer, reset_position_ids=False, reset_attention_mask=False,
                              eod_mask_loss=False)
    train, valid, test = BlendedMegatronDatasetBuilder(GPTDataset, [samples, 0, 0], lambda: True, config).build()
    counts = collections.Counter(int(i) for i in train.dataset_index)
    names = [Path(ds.dataset_path).name for ds in train.datasets]
    # One real sample: the blend hands out token sequences of the configured length.
    first = train[0]
    return {
        "shares": {names[k]: v / len(train) for k, v in counts.items()},
        "samples": len(train),
        "sample_tokens": int(first["tokens"].numel()),
        "valid": valid is not None,
        "prefix_epochs": {Path(ds.dataset_path).name: len(ds) * seq / ds.dataset.sequence_lengths.sum() for ds in train.datasets},
    }


def check_megatron(job: dict[str, Any]) -> dict[str, Any]:
    from megatron.core.datasets.utils import get_blend_from_list

    _megatron_data(job["prefixes"], job["tokens"])
    text = Path(job["file"]).read_text()
    # Megatron-LM's --data-args-path (megatron/training/utils.py get_blend_and_blend_per_split):
    blend = get_blend_from_list(text.split())
    out = _megatron_build(blend, None, job["split"], job["seq_length"], job["samples"], job["seed"])
    return {**out, "blend_weights": blend[1]}


def check_megatron_per_split(job: dict[str, Any]) -> dict[str, Any]:
    from megatron.core.datasets.utils import get_blend_from_list

    _megatron_data(job["prefixes"], job["tokens"])
    # Megatron-LM's --per-split-data-args-path, as get_blend_and_blend_per_split reads it.
    with open(job["file"]) as f:
        per_split = json.load(f)
    for split in ["train", "valid", "test"]:
        if isinstance(per_split[split], str):
            per_split[split] = per_split[split].split()
    blend_per_split = [get_blend_from_list(per_split[s]) for s in ("train", "valid", "test")]
    samples = per_split["demix"]["train_samples"]
    return _megatron_build(None, blend_per_split, None, job["seq_length"], samples, job["seed"])


def check_megatron_bridge(job: dict[str, Any]) -> dict[str, Any]:
    import yaml

    _megatron_data(job["prefixes"], job["tokens"])
    doc = yaml.safe_load(Path(job["file"]).read_text())
    ds = doc["dataset"]
    # Bridge's GPTDatasetConfig is megatron-core's with seq_length for sequence_length; its
    # finalize() runs megatron-core's __post_init__, which the constructor here runs.
    prefixes, weights = ds["blend"]
    out = _megatron_build((prefixes, weights), None, ds["split"], ds["seq_length"], doc["train"]["train_samples"],
                          ds["random_seed"])
    return {**out, "train": doc["train"]}


def check_nemo(job: dict[str, Any]) -> dict[str, Any]:
    import yaml
    from megatron.core.datasets.utils import get_blend_from_list

    _megatron_data(job["prefixes"], job["tokens"])
    doc = yaml.safe_load(Path(job["file"]).read_text())
    if job["kind"] == "nemo2":
        data = doc["data"]
        # PreTrainingDataModule.__init__: paths, weights = get_blend_from_list(paths); blend=[paths, weights].
        paths, weights = get_blend_from_list(data["paths"])
        return _megatron_build([paths, weights], None, data["split"], data["seq_length"], data["num_train_samples"],
                               data["seed"])
    data = doc["model"]["data"]
    blend = get_blend_from_list(data["data_prefix"])
    return _megatron_build(blend, None, data["splits_string"], job["seq_length"], job["samples"], job["seed"])


# --------------------------------------------------------------------------- OLMo-core


def _npy_tokens(paths: dict[str, str], tokens: dict[str, int]) -> None:
    """OLMo-core's token files: raw uint16 token ids, counted from the file size."""
    for d, n in tokens.items():
        Path(paths[d]).parent.mkdir(parents=True, exist_ok=True)
        np.arange(n, dtype=np.uint16).tofile(paths[d])


def check_olmo_core(job: dict[str, Any]) -> dict[str, Any]:
    from olmo_core.data.source_mixture import SourceMixtureDatasetConfig, SourceMixtureList

    _npy_tokens(job["prefixes"], job["tokens"])
    if job["kind"] == "olmo-core":
        config = SourceMixtureDatasetConfig.from_yaml(job["file"])
    else:  # olmo-core-sources: the list alone, the budget given by the training script
        sources = SourceMixtureList.from_yaml(job["file"])
        sources.validate()
        config = SourceMixtureDatasetConfig(source_list=sources, requested_tokens=job["requested_tokens"],
                                            global_batch_size=job["global_batch_size"])
    config.quiet = True
    config.render_tables = False
    config.validate()
    try:
        mixture = config.build(npdtype=np.uint16, sequence_length=job["seq_length"])
    except Exception as exc:  # noqa: BLE001 - the test asserts on the trainer's own message
        return {"built": False, "error": f"{type(exc).__name__}: {exc}"}
    got = {s.name: sum(p.tokens for p in s.path_tokens) for s in mixture.sources}
    total = sum(got.values())
    return {"built": True, "shares": {d: t / total for d, t in got.items()}, "tokens": total,
            "requested_tokens": config.requested_tokens, "global_batch_size": config.global_batch_size}


# --------------------------------------------------------------------------- HF datasets


def check_hf_sums(job: dict[str, Any]) -> dict[str, Any]:
    """Every file's probabilities through interleave_datasets (which raises when they do not sum
    to 1), and the same probabilities rounded to 6 digits (what demix wrote before) for contrast."""
    from datasets import Dataset, interleave_datasets

    failed, rounded_failed = [], 0
    for path in job["files"]:
        cfg = json.loads(Path(path).read_text())
        kwargs = dict(cfg["interleave_datasets"], stopping_strategy="first_exhausted")
        dsets = [Dataset.from_dict({"i": list(range(20))}) for _ in cfg["datasets"]]
        try:
            interleave_datasets(dsets, **kwargs)
        except ValueError as exc:
            failed.append(f"{path}: {exc}")
        try:
            interleave_datasets(dsets, **dict(kwargs, probabilities=[float(f"{p:.6g}") for p in kwargs["probabilities"]]))
        except ValueError:
            rounded_failed += 1
    return {"failed": failed, "rounded_failed": rounded_failed, "files": len(job["files"])}


def check_hf_draw(job: dict[str, Any]) -> dict[str, Any]:
    """One real draw: documents of each domain's mean length, interleaved as the file says, the
    first ``examples`` taken; the realised shares of documents and of tokens."""
    from datasets import Dataset, interleave_datasets

    cfg = json.loads(Path(job["file"]).read_text())
    dsets = [Dataset.from_dict({"domain": [i] * n, "length": [length] * n})
             for i, (n, length) in enumerate(zip(job["documents"], cfg["mean_document_tokens"]))]
    mixed = interleave_datasets(dsets, **cfg["interleave_datasets"])
    taken = mixed.select(range(min(cfg["examples"], len(mixed))))
    domains = np.asarray(taken["domain"])
    lengths = np.asarray(taken["length"], dtype=np.float64)
    docs = np.bincount(domains, minlength=len(dsets)) / len(domains)
    toks = np.bincount(domains, weights=lengths, minlength=len(dsets)) / lengths.sum()
    return {"examples": len(taken), "interleaved": len(mixed), "document_shares": docs.tolist(),
            "token_shares": toks.tolist()}


# --------------------------------------------------------------------------- MosaicML streaming


def _import_streaming() -> Any:
    """mosaicml-streaming's dataset classes without ``streaming/__init__.py``, which imports its
    vision datasets (torchvision: the PyPI build needs CUDA torch) and its dataloader
    (transformers, 144 MB, for a type). The classes themselves are imported and run unchanged."""
    spec = importlib.util.find_spec("streaming")
    assert spec is not None and spec.submodule_search_locations
    root = spec.submodule_search_locations[0]
    for name in ("streaming", "streaming.base"):
        module = types.ModuleType(name)
        module.__path__ = [os.path.join(root, *name.split(".")[1:])]
        sys.modules[name] = module
    from streaming.base.dataset import StreamingDataset
    from streaming.base.format.mds.writer import MDSWriter
    from streaming.base.stream import Stream

    return StreamingDataset, Stream, MDSWriter


def check_mosaic(job: dict[str, Any]) -> dict[str, Any]:
    import yaml

    StreamingDataset, Stream, MDSWriter = _import_streaming()
    seq = job["seq_length"]
    for i, d in enumerate(job["tokens"]):
        # LLM Foundry's --concat_tokens shards: one sample = seq_length tokens.
        with MDSWriter(out=job["prefixes"][d], columns={"domain": "int", "tokens": "bytes"}, size_limit=1 << 16) as w:
            for _ in range(job["tokens"][d] // seq):
                w.write({"domain": i, "tokens": np.zeros(seq, dtype=np.uint16).tobytes()})
    dataset = yaml.safe_load(Path(job["file"]).read_text())["train_loader"]["dataset"]
    # LLM Foundry builds one Stream per entry of `streams` and hands the rest to StreamingDataset.
    streams = [Stream(**s) for s in dataset["streams"].values()]
    ds = StreamingDataset(streams=streams, epoch_size=dataset["epoch_size"], shuffle_seed=dataset["shuffle_seed"],
                          batch_size=1, shuffle=True)
    counts = collections.Counter(int(sample["domain"]) for sample in ds)
    names = list(job["tokens"])
    total = sum(counts.values())
    return {"shares": {names[k]: v / total for k, v in counts.items()}, "samples": total,
            "epoch_size": dataset["epoch_size"]}


# --------------------------------------------------------------------------- litdata, torchtitan


def check_litdata(job: dict[str, Any]) -> dict[str, Any]:
    from litdata import CombinedStreamingDataset, StreamingDataset
    from litdata.streaming.writer import BinaryWriter

    seq = job["seq_length"]
    for i, d in enumerate(job["tokens"]):
        writer = BinaryWriter(job["prefixes"][d], chunk_size=64)
        for k in range(job["tokens"][d] // seq):
            writer[k] = {"domain": i, "k": k}
        writer.done()
        writer.merge()
    cfg = json.loads(Path(job["file"]).read_text())
    combined = CombinedStreamingDataset([StreamingDataset(d) for d in cfg["input_dirs"]], **cfg["combined_streaming_dataset"])
    counts: collections.Counter[int] = collections.Counter()
    drawn = 0
    for sample in combined:
        counts[int(sample["domain"])] += 1
        drawn += 1
        if drawn == cfg["samples"]:
            break
    names = list(job["tokens"])
    return {"shares": {names[k]: v / drawn for k, v in counts.items()}, "samples": drawn}


class _PackedSource:
    """A source of packed samples for torchtitan's InterleavedDataset (the state_dict /
    load_state_dict / reloop protocol its HuggingFaceTextDataset implements)."""

    def __init__(self, domain: int, samples: int, infinite: bool) -> None:
        self.domain, self.samples, self.infinite, self.pos = domain, samples, infinite, 0

    def __iter__(self):
        while True:
            while self.pos < self.samples:
                self.pos += 1
                yield {"domain": self.domain}
            if not self.infinite:
                return
            self.pos = 0

    def reloop(self) -> None:
        self.pos = 0

    def state_dict(self) -> dict[str, int]:
        return {"pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.pos = state["pos"]


def check_torchtitan(job: dict[str, Any]) -> dict[str, Any]:
    from torchtitan.hf_datasets.interleaved import InterleavedDataset
    from torchtitan.hf_datasets.text_datasets import HFDataSource, InterleavedHuggingFaceTextDataLoader

    cfg = json.loads(Path(job["file"]).read_text())
    config = InterleavedHuggingFaceTextDataLoader.Config(
        sources=[HFDataSource(**s) for s in cfg["sources"]], seed=cfg["seed"], stopping_strategy=cfg["stopping_strategy"]
    )
    seq = job["seq_length"]
    names = [s.dataset for s in config.sources]
    # What InterleavedHuggingFaceTextDataLoader.__init__ does, with packed sources of our tiny data.
    ds = InterleavedDataset(
        datasets=[_PackedSource(i, job["tokens"][n] // seq, s.infinite) for i, (n, s) in enumerate(zip(names, config.sources))],
        weights=[s.weight for s in config.sources], seed=config.seed, stopping_strategy=config.stopping_strategy,
    )
    counts: collections.Counter[int] = collections.Counter()
    drawn = 0
    for sample in ds:
        counts[sample["domain"]] += 1
        drawn += 1
        if drawn == job["samples"]:
            break
    return {"shares": {names[k]: v / drawn for k, v in counts.items()}, "samples": drawn,
            "infinite": [s.infinite for s in config.sources]}


CHECKS = {
    "megatron": check_megatron,
    "megatron-per-split": check_megatron_per_split,
    "megatron-bridge": check_megatron_bridge,
    "nemo2": check_nemo,
    "nemo1": check_nemo,
    "olmo-core": check_olmo_core,
    "olmo-core-sources": check_olmo_core,
    "hf-sums": check_hf_sums,
    "hf-draw": check_hf_draw,
    "mosaic": check_mosaic,
    "litdata": check_litdata,
    "torchtitan": check_torchtitan,
}


def main(jobs_path: str) -> None:
    jobs = json.loads(Path(jobs_path).read_text())
    results = []
    for job in jobs:
        try:
            results.append({"ok": True, **CHECKS[job["kind"]](job)})
        except Exception as exc:  # noqa: BLE001 - reported to the test, which shows it
            results.append({"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]})
    print("DEMIX_TRAINER_CHECK " + json.dumps(results))


if __name__ == "__main__":
    os.environ.setdefault("TMPDIR", tempfile.gettempdir())
    main(sys.argv[1])
