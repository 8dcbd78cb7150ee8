"""The prepare stage: read each domain, split it, train (or copy) the tokenizer, pack tokens.

Outputs in the run directory (see :mod:`demix.rundir`):

- ``tokenizer/``: the run's ``PreTrainedTokenizerFast``;
- ``data/<domain>/{train,heldout}.{bin,idx.npy,meta.json}``: packed tokens (:mod:`demix.packing`);
- ``data/provenance.json``: per domain source, licence, documents / bytes / tokens per split,
  and the fingerprint of the data + tokenizer config. It is written last, so its presence with
  the same fingerprint means the stage is complete and is skipped.

Nothing outside the run's own outputs is ever removed: each domain is packed in a hidden staging
directory and renamed into ``data/<domain>/``, replacing only a pack demix wrote (told apart by
its files, :func:`demix.packing.is_pack_dir`); a source inside ``data/`` (or one that holds the run
directory) and a ``tokenizer.path`` inside the run's ``tokenizer/`` are refused before anything
is written (:func:`check_layout`).

Two passes over each domain's documents (they are re-read, not held in memory, so user corpora
larger than RAM work): the first feeds the tokenizer trainer with training documents up to
``tokenizer.max_train_bytes`` (an equal share per domain), the second tokenises every document
in batches and packs it. Held-out documents never reach the tokenizer or training data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from demix.config import DomainConfig, RunConfig
from demix.corpora import Corpus, SplitStats, check_nonempty, open_corpus, split_documents
from demix.errors import DemixError
from demix.packing import (
    PackedTokens,
    PackedWriter,
    check_replaceable,
    inside,
    remove_pack_dir,
    remove_stale,
    replace_pack_dir,
    split_prefix,
    staging_dir,
)
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


def keeps_tokenizer(config: RunConfig, run: RunDir, previous: dict[str, Any] | None) -> bool:
    """True when prepare must keep the run's trained tokenizer instead of training a new one: a
    previous prepare finished with the same ``tokenizer`` settings and the run already holds a
    base or component trained with it (a new tokenizer would strand them: adding a domain to a
    finished run must keep its base and components). A user's ``tokenizer.path`` is loaded anyway."""
    from demix.checkpoints import is_finished

    if previous is None or config.tokenizer.path or not run.tokenizer.is_dir():
        return False
    recorded = previous.get("tokenizer_config")
    if recorded is not None and recorded != config.tokenizer.model_dump(mode="json"):
        return False
    return is_finished(run.base) or any(is_finished(run.component(d)) for d in config.data.domain_names)


def domain_fingerprint(config: RunConfig, corpus: Corpus, tokenizer_file: Path) -> str:
    """What one domain's pack depends on: its config and source, the split settings and the
    tokenizer's own file; a domain whose fingerprint is unchanged is not packed again."""
    tok = hashlib.sha256(tokenizer_file.read_bytes()).hexdigest() if tokenizer_file.is_file() else None
    d = config.data
    payload = {"format": FORMAT_VERSION, "domain": corpus.domain.model_dump(mode="json"), "source": corpus.fingerprint(),
               "seed": d.seed, "heldout_fraction": d.heldout_fraction, "max_heldout_documents": d.max_heldout_documents,
               "tokenizer": tok}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _make_tokenizer(config: RunConfig, run: RunDir, corpora: dict[str, Corpus], bar: Any, prepared_before: bool,
                    keep: bool = False) -> Any:
    from demix.tokenizer import load_tokenizer, save_tokenizer, train_bpe

    if keep:
        log.info("keeping the run's tokenizer (%s): its base or components were trained with it", run.tokenizer)
        return load_tokenizer(run.tokenizer)
    if config.tokenizer.path:
        tok = load_tokenizer(config.tokenizer.path, trust_remote_code=config.model.trust_remote_code)
    else:
        t0 = time.perf_counter()
        tok = train_bpe(_tokenizer_texts(config, corpora, bar), config.tokenizer.vocab_size)
        log.info("trained byte-level BPE, vocabulary %d, in %.1f s", len(tok), time.perf_counter() - t0)
    save_tokenizer(tok, inside(run.root, run.tokenizer), replace_unmarked=prepared_before)
    return tok


# --------------------------------------------------------------------------- layout checks


def _check_source(domain: DomainConfig, run: RunDir) -> None:
    """A user source must not live where prepare writes, nor hold the run (it would read its own files)."""
    if domain.source.strip().startswith("builtin:"):
        return
    source = Path(domain.source.strip()).expanduser().resolve()
    if source.is_relative_to(run.data.resolve()):
        raise DemixError(
            f"data source '{domain.source}' of domain '{domain.name}' is inside the run's own data directory "
            f"'{run.data}', which prepare rewrites",
            f"move it outside '{run.data}' (e.g. to a sources/ folder beside it) and point data.domains[].source there",
        )
    if source.is_dir() and run.root.resolve().is_relative_to(source):
        raise DemixError(
            f"data source '{domain.source}' of domain '{domain.name}' contains the run directory '{run.root}': "
            "prepare would read the run's own files as documents",
            "point source at a folder holding only the domain's files, or set output_dir outside it",
        )


def _check_tokenizer_path(path: str, run: RunDir) -> None:
    if Path(path).expanduser().resolve().is_relative_to(run.tokenizer.resolve()):
        raise DemixError(
            f"tokenizer.path '{path}' is inside the run's own tokenizer directory '{run.tokenizer}', which prepare rewrites",
            f"copy your tokenizer outside '{run.tokenizer}' and point tokenizer.path there",
        )


def check_layout(config: RunConfig, run: RunDir) -> None:
    """Refuse, before anything is written, a layout in which prepare would remove or overwrite a
    user's files or read its own outputs: a source inside ``data/`` or holding the run, a
    ``tokenizer.path`` inside the run's ``tokenizer/``, and a ``data/<domain>/`` or ``tokenizer/``
    that demix did not write."""
    from demix.tokenizer import check_replaceable as check_tokenizer_replaceable

    if run.data.exists() and not run.data.is_dir():
        raise DemixError(f"'{run.data}' is not a directory; prepare writes the packed data there", "move that file away")
    for domain in config.data.domains:
        _check_source(domain, run)
    if config.tokenizer.path:
        _check_tokenizer_path(config.tokenizer.path, run)
    for name in config.data.domain_names:
        check_replaceable(run.domain_data(name), run.data)
    check_tokenizer_replaceable(inside(run.root, run.tokenizer), replace_unmarked=run.provenance.is_file())


# --------------------------------------------------------------------------- packing


def _pack_domain(config: RunConfig, run: RunDir, corpus: Corpus, tok: Any, bar: Any) -> dict[str, Any]:
    """Pack one domain in a staging directory, then rename it into ``data/<domain>/``."""
    # The data directory is the root of the guard (not the run): a data/ linked to a larger disk still works.
    target = inside(run.data, run.domain_data(corpus.domain.name))
    staging = staging_dir(target)
    try:
        record = _pack_into(staging, config, corpus, tok, bar)
        replace_pack_dir(staging, target, run.data)
    finally:
        remove_pack_dir(staging, run.data)  # still there only when packing failed: the previous pack stays
    return record


def _pack_into(out_dir: Path, config: RunConfig, corpus: Corpus, tok: Any, bar: Any) -> dict[str, Any]:
    """Split, tokenise and write one domain's packed files into ``out_dir``; its provenance record."""
    from demix.tokenizer import encode_batch

    name = corpus.domain.name
    max_tokens = corpus.domain.max_tokens
    vocab = len(tok)
    writers = {s: PackedWriter(out_dir / s, vocab, tok.eos_token_id) for s in ("train", "heldout")}
    stats = SplitStats()
    decoder = corpus.decoder()
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
        corpus.documents(decoder), config.data.seed, config.data.heldout_fraction, config.data.max_heldout_documents, stats
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

    _check_splits(config, corpus.domain, metas)
    if decoder.total:
        log.warning("domain %s: replaced %d invalid UTF-8 sequences in %d files (errors: replace)",
                    name, decoder.total, len(decoder.replaced))
    return {
        **corpus.provenance(decoder),
        "documents_read": stats.documents_read,
        "duplicates_dropped": stats.duplicates,
        "heldout_dropped_over_cap": stats.heldout_over_cap,
        "capped_at_max_tokens": capped,
        "splits": {
            s: {k: metas[s][k] for k in ("documents", "bytes", "tokens")} for s in ("train", "heldout")
        },
    }


def _check_splits(config: RunConfig, domain: DomainConfig, metas: dict[str, dict[str, Any]]) -> None:
    """A domain needs documents, and at least one in each split."""
    total_docs = metas["train"]["documents"] + metas["heldout"]["documents"]
    check_nonempty(domain.name, domain.source, total_docs)
    for split, what in (("heldout", "data.heldout_fraction"), ("train", "data.heldout_fraction (lower)")):
        if metas[split]["documents"] == 0:
            raise DemixError(
                f"domain '{domain.name}' has no {split} documents ({total_docs} documents in all, "
                f"heldout_fraction {config.data.heldout_fraction})",
                f"add documents to the domain (a .txt file splits on blank lines), or change {what}",
            )


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
    check_layout(config, run)

    t0 = time.perf_counter()
    # A finished prepare of an older demix left a tokenizer without demix's marker: it may be replaced.
    prepared_before = run.provenance.is_file()
    try:
        previous = read_json(run.provenance) if prepared_before else None
    except (OSError, ValueError):
        previous = None
    keep = keeps_tokenizer(config, run, previous)
    # Invalidate first: a crash half-way must not leave an old provenance that looks complete.
    run.provenance.unlink(missing_ok=True)
    run.data.mkdir(parents=True, exist_ok=True)
    remove_stale(run.data)
    with _progress(progress) as bar:
        tok = _make_tokenizer(config, run, corpora, bar, prepared_before, keep)
        tokenizer_file = run.tokenizer / "tokenizer.json"
        old_domains = (previous or {}).get("domains", {}) if keep else {}
        domains = {}
        for name, corpus in corpora.items():
            fp = domain_fingerprint(config, corpus, tokenizer_file)
            old = old_domains.get(name)
            packed = all(PackedTokens.exists(split_prefix(run.data, name, s)) for s in ("train", "heldout"))
            if isinstance(old, dict) and old.get("fingerprint") == fp and packed:
                log.info("prepare: domain %s unchanged, its pack is kept", name)
                domains[name] = old  # the same tokenizer, source and split: the same pack
            else:
                domains[name] = {**_pack_domain(config, run, corpus, tok, bar), "fingerprint": fp}
    result = {
        "fingerprint": fingerprint,
        "format": FORMAT_VERSION,
        "tokenizer_config": config.tokenizer.model_dump(mode="json"),
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
