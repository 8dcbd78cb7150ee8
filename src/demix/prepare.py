"""The prepare stage: read each domain, split it, train (or copy) the tokenizer, pack tokens.

Outputs in the run directory (see :mod:`demix.rundir`):

- ``tokenizer/``: the run's ``PreTrainedTokenizerFast``;
- ``data/<domain>/{train,heldout}.{bin,idx.npy,meta.json}``: packed tokens (:mod:`demix.packing`);
- ``data/provenance.json``: per domain source, licence, documents / bytes / tokens per split,
  and the fingerprint of the data + tokenizer config. It is written last, so its presence with
  the same fingerprint means the stage is complete and is skipped.

Two passes over each domain's documents (they are re-read, not held in memory, so user corpora
larger than RAM work): the first feeds the tokenizer trainer with training documents up to
``tokenizer.max_train_bytes`` (an equal share per domain), the second tokenises every document
in batches and packs it. Held-out documents never reach the tokenizer or training data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import nullcontext
from typing import Any

from demix.config import RunConfig
from demix.corpora import Corpus, SplitStats, check_nonempty, open_corpus, split_documents
from demix.errors import DemixError
from demix.packing import PackedTokens, PackedWriter, split_prefix
from demix.rundir import RunDir, read_json, write_json

log = logging.getLogger("demix.prepare")

FORMAT_VERSION = 1
"""Bumped when the prepared data would differ for the same config (forces a re-prepare)."""

_BATCH_BYTES = 1 << 20
"""Texts are tokenised in batches of about this many bytes (the Rust tokenizer runs a batch in parallel)."""


def data_fingerprint(config: RunConfig, corpora: dict[str, Corpus] | None = None) -> str:
    """Hash of everything the prepared data depends on: data and tokenizer config, and each
    source's own fingerprint (builtin versions, or user file sizes and modification times)."""
    corpora = corpora or {d.name: open_corpus(d) for d in config.data.domains}
    payload = {
        "format": FORMAT_VERSION,
        "data": config.data.model_dump(mode="json"),
        "tokenizer": config.tokenizer.model_dump(mode="json"),
        "sources": {name: c.fingerprint() for name, c in corpora.items()},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def is_prepared(config: RunConfig, run: RunDir) -> bool:
    """True when the run holds complete prepared data for exactly this data + tokenizer config."""
    if not run.provenance.is_file() or not run.tokenizer.is_dir():
        return False
    try:
        stamp = read_json(run.provenance).get("fingerprint")
    except (OSError, ValueError):
        return False
    if stamp != data_fingerprint(config):
        return False
    return all(
        PackedTokens.exists(split_prefix(run.data, d, s)) for d in config.data.domain_names for s in ("train", "heldout")
    )


def _progress(enabled: bool):
    if not enabled:
        return nullcontext(None)
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
    )


def _tokenizer_texts(config: RunConfig, corpora: dict[str, Corpus], bar: Any) -> Iterator[str]:
    """Training documents of every domain, each domain contributing at most an equal byte share."""
    share = config.tokenizer.max_train_bytes // len(corpora)
    task = bar.add_task("tokenizer: reading", total=share * len(corpora), info="") if bar else None
    for name, corpus in corpora.items():
        used = 0
        docs = split_documents(corpus.documents(), config.data.seed, config.data.heldout_fraction)
        for split, text in docs:
            if split != "train":
                continue
            n = len(text.encode("utf-8"))
            yield text
            used += n
            if bar:
                bar.update(task, advance=n, info=name)
            if used >= share:
                break
    if bar:
        bar.update(task, completed=share * len(corpora), description="tokenizer: training BPE", info="")


def _make_tokenizer(config: RunConfig, run: RunDir, corpora: dict[str, Corpus], bar: Any) -> Any:
    from demix.tokenizer import load_tokenizer, save_tokenizer, train_bpe

    if config.tokenizer.path:
        tok = load_tokenizer(config.tokenizer.path, trust_remote_code=config.model.trust_remote_code)
        save_tokenizer(tok, run.tokenizer)
        return tok
    t0 = time.perf_counter()
    tok = train_bpe(_tokenizer_texts(config, corpora, bar), config.tokenizer.vocab_size, run.tokenizer)
    log.info("trained byte-level BPE, vocabulary %d, in %.1f s", len(tok), time.perf_counter() - t0)
    return tok


def _pack_domain(config: RunConfig, run: RunDir, corpus: Corpus, tok: Any, bar: Any) -> dict[str, Any]:
    from demix.tokenizer import encode_batch

    name = corpus.domain.name
    max_tokens = corpus.domain.max_tokens
    vocab = len(tok)
    out_dir = run.domain_data(name)
    shutil.rmtree(out_dir, ignore_errors=True)
    writers = {s: PackedWriter(split_prefix(run.data, name, s), vocab, tok.eos_token_id) for s in ("train", "heldout")}
    stats = SplitStats()
    task = bar.add_task(f"packing {name}", total=None, info="") if bar else None
    train_tokens = 0
    capped = False

    def flush(batch: list[tuple[str, str]]) -> bool:
        """Tokenise and write a batch; False once the training-token cap is met."""
        nonlocal train_tokens
        for (split, text), ids in zip(batch, encode_batch(tok, [t for _, t in batch])):
            if split == "train":
                if max_tokens is not None and train_tokens >= max_tokens:
                    return False
                train_tokens += len(ids) + 1  # + EOS, as counted in the packed file
            writers[split].add(ids, len(text.encode("utf-8")))
        if bar:
            bar.update(task, info=f"{stats.documents_read:,} documents, {train_tokens:,} training tokens")
        return True

    batch: list[tuple[str, str]] = []
    size = 0
    docs = split_documents(
        corpus.documents(), config.data.seed, config.data.heldout_fraction, config.data.max_heldout_documents, stats
    )
    for item in docs:
        batch.append(item)
        size += len(item[1])
        if size >= _BATCH_BYTES:
            if not flush(batch):
                capped = True
                break
            batch, size = [], 0
    if batch and not capped:
        capped = not flush(batch)
    extra = {"domain": name, "tokenizer_vocab": vocab}
    metas = {s: w.close({**extra, "split": s}) for s, w in writers.items()}
    if bar:
        bar.update(task, total=1, completed=1)

    check_nonempty(name, corpus.domain.source, metas["train"]["documents"] + metas["heldout"]["documents"])
    total_docs = metas["train"]["documents"] + metas["heldout"]["documents"]
    for split, what in (("heldout", "data.heldout_fraction"), ("train", "data.heldout_fraction (lower)")):
        if metas[split]["documents"] == 0:
            raise DemixError(
                f"domain '{name}' has no {split} documents ({total_docs} documents in all, "
                f"heldout_fraction {config.data.heldout_fraction})",
                f"add documents to the domain (a .txt file splits on blank lines), or change {what}",
            )
    return {
        **corpus.provenance(),
        "documents_read": stats.documents_read,
        "duplicates_dropped": stats.duplicates,
        "heldout_dropped_over_cap": stats.heldout_over_cap,
        "capped_at_max_tokens": capped,
        "splits": {
            s: {k: metas[s][k] for k in ("documents", "bytes", "tokens")} for s in ("train", "heldout")
        },
    }


def prepare(config: RunConfig, run: RunDir, progress: bool = True, force: bool = False) -> dict[str, Any]:
    """Split, tokenise and pack every domain into ``run``; returns the provenance dict.

    Idempotent: when ``run`` already holds data prepared from the same data + tokenizer config
    (and unchanged sources), it returns the stored provenance without redoing anything, unless
    ``force``. A changed config or source file redoes the whole stage.
    """
    corpora = {d.name: open_corpus(d) for d in config.data.domains}
    fingerprint = data_fingerprint(config, corpora)
    if not force and is_prepared(config, run):
        log.info("prepare: data already prepared for this config (fingerprint %s), skipping", fingerprint[:12])
        result = read_json(run.provenance)
        result["skipped"] = True
        return result

    t0 = time.perf_counter()
    # Invalidate first: a crash half-way must not leave an old provenance that looks complete.
    run.provenance.unlink(missing_ok=True)
    run.data.mkdir(parents=True, exist_ok=True)
    with _progress(progress) as bar:
        tok = _make_tokenizer(config, run, corpora, bar)
        domains = {name: _pack_domain(config, run, corpus, tok, bar) for name, corpus in corpora.items()}
    result = {
        "fingerprint": fingerprint,
        "format": FORMAT_VERSION,
        "tokenizer": {
            "path": config.tokenizer.path or "trained byte-level BPE",
            "vocab_size": len(tok),
            "eos_token": tok.eos_token,
            "eos_id": tok.eos_token_id,
        },
        "seed": config.data.seed,
        "heldout_fraction": config.data.heldout_fraction,
        "domains": domains,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_json(run.provenance, result)
    log.info("prepare: %d domains in %.1f s", len(domains), result["seconds"])
    result["skipped"] = False
    return result


def domain_token_counts(run: RunDir) -> dict[str, int]:
    """Training tokens per domain, read from the packed files' metadata (domain order of the run)."""
    if not run.provenance.is_file():
        raise DemixError(f"run '{run.root}' has no prepared data ({run.provenance} is missing)", "run `demix prepare CONFIG` first")
    names = list(read_json(run.provenance)["domains"])
    return {name: PackedTokens(split_prefix(run.data, name, "train")).num_tokens for name in names}
