"""Transfer targets: held-out loss on corpora that are not components (``fidelity.transfer``).

On a training domain's own held-out loss the mixture weights alone rank mixtures about as well
as any proxy (docs/fidelity.md, section 5), so those targets cannot tell proxies apart. A corpus
no component was trained on (a built-in corpus left out of ``data.domains``, one half of a
split corpus, any file) asks the question DeMix is for: how does a mixture transfer to text it
does not contain? Each transfer corpus is scored for every model the fidelity stage compares,
as benchmark ``heldout:<name>`` (bits per byte, lower is better) and capability ``<name>``.

- Tokens: the first ``evaluation.heldout_tokens`` (+1) tokens of the corpus, tokenised with the
  run's tokenizer once, written to ``<run>/fidelity/transfer/<name>/heldout`` (demix's packed
  format) and reused while the corpus, tokenizer and settings are unchanged.
- Scores: kept in ``<run>/fidelity/transfer_scores.json`` per model (proxy kind and mixture key),
  with the identity of the weights they were computed from (size and modification time of the
  safetensors files, or the components' fingerprint and merge settings for a merged proxy) and
  written after each model, so a resumed stage scores nothing twice. They stay out of the
  store's rows, whose benchmark set is the search's.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from demix.config import DomainConfig, RunConfig
from demix.errors import DemixError
from demix.evaluation.benchmarks import heldout_benchmark_name
from demix.rundir import RunDir, read_run_file, write_json

FORMAT_VERSION = 1


def transfer_root(run: RunDir) -> Path:
    """``<run>/fidelity/transfer``: the packed tokens of the transfer corpora."""
    return run.fidelity / "transfer"


def scores_file(run: RunDir) -> Path:
    """``<run>/fidelity/transfer_scores.json``."""
    return run.fidelity / "transfer_scores.json"


def transfer_benchmarks(config: RunConfig) -> dict[str, str]:
    """Capability (the corpus name) -> its benchmark name (``heldout:<name>``), config order."""
    return {t.name: heldout_benchmark_name(t.name) for t in config.fidelity.transfer}


def check_transfer(config: RunConfig) -> None:
    """Refuse a transfer corpus that is a component's domain (by name or source) or whose
    benchmark or capability name the run already uses; DemixError naming it and the fix."""
    from demix.evaluation import resolve_benchmarks, resolve_capabilities

    domains = {d.name: d.source.strip() for d in config.data.domains}
    benchmarks = resolve_benchmarks(config)
    taken = {b.name for b in benchmarks} | {c.name for c in resolve_capabilities(config, benchmarks)}
    seen: set[str] = set()
    for t in config.fidelity.transfer:
        where = f"fidelity.transfer '{t.name}'"
        if t.name in seen:
            raise DemixError(f"{where} is given twice", "name every transfer corpus once")
        seen.add(t.name)
        if t.name in domains:
            raise DemixError(f"{where} is one of data.domains: its components are trained on it, so it is no transfer "
                             "target", "give the corpus another name, or leave it out of data.domains")
        same = [d for d, src in domains.items() if src == t.source.strip()]
        if same:
            raise DemixError(f"{where} reads '{t.source}', the source of domain(s) {same}: a component trains on it",
                             "use a corpus no component trains on (e.g. the other half of a split corpus: "
                             "benchmarks/split_corpus.py)")
        for name in (t.name, heldout_benchmark_name(t.name)):
            if name in taken:
                raise DemixError(f"{where} gives '{name}', already a benchmark or capability of the run",
                                 "rename the transfer corpus")


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _tokenizer_hash(run: RunDir) -> str:
    h = hashlib.sha256()
    for f in sorted(Path(run.tokenizer).glob("*.json")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _corpus_fingerprint(config: RunConfig, run: RunDir, corpus: DomainConfig) -> str:
    from demix.corpora import open_corpus

    return _digest({"corpus": open_corpus(corpus).fingerprint(), "tokenizer": _tokenizer_hash(run),
                    "tokens": config.evaluation.heldout_tokens})


def prepare_transfer(config: RunConfig, run: RunDir) -> dict[str, Path]:
    """Tokenise the first ``evaluation.heldout_tokens`` + 1 tokens of each transfer corpus (once:
    a pack with the same fingerprint is reused); name -> the packed prefix. A corpus with fewer
    tokens than one evaluation window is a DemixError naming it."""
    from demix.corpora import open_corpus
    from demix.packing import PackedTokens, PackedWriter
    from demix.tokenizer import encode_batch, load_tokenizer

    out: dict[str, Path] = {}
    tok = None
    need = config.evaluation.heldout_tokens + 1
    for t in config.fidelity.transfer:
        prefix = transfer_root(run) / t.name / "heldout"
        fingerprint = _corpus_fingerprint(config, run, t)
        if PackedTokens.exists(prefix) and PackedTokens(prefix).meta.get("fingerprint") == fingerprint:
            out[t.name] = prefix
            continue
        tok = tok or load_tokenizer(run.tokenizer)
        corpus = open_corpus(t)
        writer = PackedWriter(prefix, len(tok), tok.eos_token_id)
        total = 0
        batch: list[str] = []
        docs = corpus.documents(corpus.decoder())
        for doc in docs:
            batch.append(doc)
            if len(batch) < 64:
                continue
            total = _write(writer, tok, batch, total, encode_batch)
            batch = []
            if total >= need:
                break
        if batch and total < need:
            total = _write(writer, tok, batch, total, encode_batch)
        meta = writer.close({"transfer": t.name, "source": t.source, "fingerprint": fingerprint,
                             "license": corpus.license})
        if meta["tokens"] < config.model.seq_len + 1:
            raise DemixError(
                f"fidelity.transfer '{t.name}' ('{t.source}') holds {meta['tokens']} tokens, fewer than one "
                f"evaluation window of model.seq_len + 1 = {config.model.seq_len + 1}",
                "give the corpus more text, or lower model.seq_len")
        out[t.name] = prefix
    return out


def _write(writer: Any, tok: Any, texts: list[str], total: int, encode_batch: Any) -> int:
    for text, ids in zip(texts, encode_batch(tok, texts)):
        writer.add(ids, len(text.encode("utf-8")))
        total += len(ids) + 1
    return total


class TransferEvaluator:
    """Bits per byte of a model on every transfer corpus (held-out windows prepared once)."""

    def __init__(self, config: RunConfig, run: RunDir, device: str | None = None) -> None:
        import torch

        from demix.checkpoints import resolve_device
        from demix.evaluation.heldout import HeldoutLoss, load_heldout_set, token_byte_lengths
        from demix.tokenizer import load_tokenizer

        ev = config.evaluation
        dev = torch.device(resolve_device(device or ev.device, "evaluation.device"))
        prefixes = prepare_transfer(config, run)
        lengths = token_byte_lengths(load_tokenizer(run.tokenizer))
        sets = {name: load_heldout_set(p, name, config.model.seq_len, ev.heldout_tokens, lengths, dev)
                for name, p in prefixes.items()}
        self.names = transfer_benchmarks(config)
        self.loss = HeldoutLoss(sets, ev.batch_size)

    def evaluate(self, model: Any) -> dict[str, float]:
        """``{heldout:<name>: bits per byte}`` of ``model``."""
        per = self.loss.evaluate(model)
        return {self.names[name]: float(per[name]["bits_per_byte"]) for name in self.names}


def weights_identity(path: str | Path) -> str:
    """Cheap identity of a checkpoint's weights: name, size and modification time of its
    safetensors files (as :func:`demix.checkpoints.components_fingerprint`; no weights read)."""
    parts = [f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in sorted(Path(path).glob("*.safetensors"))]
    if not parts:
        raise DemixError(f"'{path}' holds no safetensors weights, so its transfer targets cannot be scored",
                         "train the model again (its directory was removed or replaced)")
    return _digest([str(Path(path).resolve()), parts])


@dataclass
class TransferScores:
    """``transfer_scores.json``: bits per byte per model on the transfer corpora, keyed by
    ``<proxy kind> <mixture key>``, each with the identity of the weights it was computed from;
    rows of other settings (corpora, tokenizer, held-out tokens, ``model.seq_len``) are dropped."""

    path: Path
    settings: str
    rows: dict[str, dict[str, Any]]

    @classmethod
    def open(cls, config: RunConfig, run: RunDir) -> TransferScores:
        """The run's file, or an empty one (a file of other settings is started afresh)."""
        settings = _digest({"corpora": [_corpus_fingerprint(config, run, t) for t in config.fidelity.transfer],
                            "seq_len": config.model.seq_len})
        path = scores_file(run)
        rows: dict[str, dict[str, Any]] = {}
        if path.is_file():
            data = read_run_file(path, "delete it; the stage scores the transfer corpora again")
            try:
                if int(data.get("version", 0)) == FORMAT_VERSION and data.get("settings") == settings:
                    rows = {str(k): dict(v) for k, v in data["rows"].items()}
            except (AttributeError, KeyError, TypeError, ValueError):
                raise DemixError(f"'{path}' is not a transfer scores file",
                                 "delete it; the stage scores the transfer corpora again") from None
        return cls(path, settings, rows)

    def get(self, kind: str, key: str, identity: str) -> dict[str, float] | None:
        """The stored values of that model, or None (none stored, or of other weights)."""
        row = self.rows.get(f"{kind} {key}")
        if row is None or row.get("model") != identity:
            return None
        return {str(b): float(v) for b, v in row["bits_per_byte"].items()}

    def put(self, kind: str, key: str, identity: str, values: Mapping[str, float]) -> None:
        """Record one model's values and write the file (atomically)."""
        self.rows[f"{kind} {key}"] = {"model": identity, "bits_per_byte": dict(values)}
        write_json(self.path, {"version": FORMAT_VERSION, "settings": self.settings, "rows": self.rows})


class TransferPass:
    """Adds the transfer targets to the scores of every model the stage compares: from
    ``transfer_scores.json`` when that model was scored before, else evaluated (the evaluator
    and its held-out windows are built on first use) and recorded before the next model."""

    def __init__(self, config: RunConfig, run: RunDir, device: str | None = None) -> None:
        self.config = config
        self.run = run
        self.device = device
        self.scores = TransferScores.open(config, run)
        self._evaluator: TransferEvaluator | None = None
        self.evaluations = 0
        """Models scored on the transfer corpora here (not read from the file)."""

    @property
    def evaluator(self) -> TransferEvaluator:
        if self._evaluator is None:
            self._evaluator = TransferEvaluator(self.config, self.run, self.device)
        return self._evaluator

    def checkpoint(self, kind: str, key: str, path: Path, scores: Any) -> None:
        """The trained model at ``path`` (store kind ``kind``, mixture ``key``): its transfer
        values into ``scores`` (a :class:`~demix.fidelity.models.ModelScores`)."""
        identity = weights_identity(path)
        values = self.scores.get(kind, key, identity)
        if values is None:
            import torch

            from demix.checkpoints import resolve_device
            from demix.training import load_checkpoint, quiet_transformers

            with quiet_transformers():
                model = load_checkpoint(path, self.config.model.trust_remote_code, torch.float32)
            model.to(resolve_device(self.device or self.config.evaluation.device, "evaluation.device")).eval()
            values = self._evaluate(kind, key, identity, model)
            del model
        _augment(scores, values)

    def resident(self, kind: str, key: str, identity: str, model: Any, scores: Any) -> None:
        """The same for a model in memory (a merged proxy) whose weights ``identity`` names."""
        values = self.scores.get(kind, key, identity)
        if values is None:
            values = self._evaluate(kind, key, identity, model)
        _augment(scores, values)

    def _evaluate(self, kind: str, key: str, identity: str, model: Any) -> dict[str, float]:
        import torch

        with torch.no_grad():
            values = self.evaluator.evaluate(model)
        self.evaluations += 1
        self.scores.put(kind, key, identity, values)
        return values


def merged_identity(components: str | None, config: RunConfig, key: str) -> str:
    """Identity of a merged proxy's weights: the components' fingerprint, the merge settings and
    the mixture."""
    return _digest({"components": components, "merge": config.merge.model_dump(mode="json"), "key": key})


def _augment(scores: Any, values: Mapping[str, float]) -> None:
    # Bits per byte is a loss: the capability score is its negation (higher is better), as the
    # run's own held-out capabilities are.
    for benchmark, bpb in values.items():
        scores.benchmarks[benchmark] = float(bpb)
        scores.higher_is_better[benchmark] = False
        scores.capabilities[benchmark.removeprefix("heldout:")] = -float(bpb)
