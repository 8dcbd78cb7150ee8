"""Exporters: the chosen mixture (``best_mixture.json``) in the format each trainer reads.

What is exported is the **data mixture** by default (``best.mixture("data")``): the token shares
of the training data the winning proxies stand for, what a user trains on. ``--weights
components`` exports the **component weights** instead (the merge coefficients of the proxies),
for users who know why; every file that can hold a comment starts with one saying which of the
two it holds, and ``demix export`` says it in its message. Token counts and epochs written by
any format come from the data mixture.

Each format is what the current release of its trainer reads (``trainer`` on each class, the
table in docs/exporters.md); ``tests/exporters`` loads every one with the trainer's own classes.
Every exporter states the unit of the numbers it writes:

- *token share*: the fraction of training tokens drawn from a domain (a data mixture).
  Trainers that sample fixed-length sequences (Megatron, NeMo, Megatron-Bridge, nanotron,
  OLMo-core, MosaicML streams of concatenated tokens, litdata ``TokensLoader``, torchtitan's
  packed sources) take token shares directly.
- *document probability*: the chance that the next example comes from a domain, where an
  example is one document (HF ``interleave_datasets``). Converted from the data mixture's token
  shares with the mean document length: p_d is proportional to data_d / mean_tokens_per_document_d.

Data locations are given per domain (``--data-prefix general=/data/general_text_document``); a
domain without one is an error (the trainer would fail much later on a path named after the
domain) unless ``--allow-placeholder-paths`` asks for the names as stand-ins.

Why one module of ~720 lines (for now): every format shares the checked :class:`Export`
record, the unit notes and the path rules; splitting it into one module per trainer family
(megatron, olmo-core, hf/mosaic/litdata/torchtitan) is the next step once a format grows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
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

#: Old format names and where they went: ``get_exporter`` says so instead of "unknown".
RENAMED = {
    "nemo": "`nemo` was NeMo 1 YAML (`model.data.data_prefix`), which current NeMo releases no longer read: use "
    "`nemo2` (nemo-toolkit 2.x `llm.PreTrainingDataModule(paths=...)`), `megatron-bridge` (LLM training after NeMo 2) "
    "or, for NeMo 1 itself, `nemo1`",
}

#: Trainers that repeat a domain's data without a word when the plan needs more than one pass.
SILENT_REPEATERS = (
    "Megatron-LM, Megatron-Bridge and NeMo (GPTDataset builds as many epochs as the samples need), nanotron "
    "(Nanoset), MosaicML streaming (proportion upsampling), HF datasets (stopping_strategy all_exhausted) and "
    "torchtitan (infinite sources)"
)

_REGISTRY: dict[str, type[Exporter]] = {}


def register(cls: type[Exporter]) -> type[Exporter]:
    """Class decorator: make an exporter available by its ``name``."""
    _REGISTRY[cls.name] = cls
    return cls


def exporter_names() -> list[str]:
    """Names accepted by ``demix export --to``."""
    return list(_REGISTRY)


def get_exporter(name: str) -> Exporter:
    """The exporter called ``name``; DemixError for an unknown (or renamed) one."""
    if name in RENAMED and name not in _REGISTRY:
        raise DemixError(f"export format '{name}' was renamed", RENAMED[name])
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


#: 2**53: float64 holds every multiple of 2**-53 in [0, 1] exactly (53 significant bits).
_GRID = 2**53


def sum_to_one(values: Sequence[float]) -> list[float]:
    """``values`` (non-negative, not all 0) scaled to sum to exactly 1.0 in float64 however they
    are summed: left to right (``sum``), ``math.fsum``, numpy's pairwise ``np.sum``, Kahan.

    Why exactly: HF ``interleave_datasets`` draws with numpy's ``choice(p=...)``, which raises
    "probabilities do not sum to 1" beyond ~1e-8 (6-digit rounding broke it for most mixtures).
    How: each value becomes a whole number of 2**-53 (largest remainders, so the counts add up to
    2**53 exactly; a positive value keeps at least one): every partial sum, in any order, is then
    a multiple of 2**-53 no larger than 1, which float64 holds exactly, so no sum ever rounds."""
    total = math.fsum(values)
    if not total > 0 or any(v < 0 for v in values):
        raise ValueError(f"weights {list(values)} are not non-negative with a positive sum")
    scaled = [float(v) / total * _GRID for v in values]
    units = [max(1, math.floor(x)) if v > 0 else 0 for x, v in zip(scaled, values)]
    by_remainder = sorted(range(len(units)), key=lambda i: scaled[i] - units[i], reverse=True)
    short = _GRID - sum(units)  # exact: Python ints
    while short:
        for i in by_remainder if short > 0 else reversed(by_remainder):
            if short == 0:
                break
            if short < 0 and units[i] <= 1:
                continue
            step = 1 if short > 0 else -1
            units[i] += step
            short -= step
    return [u / _GRID for u in units]


def _num(x: float) -> float:
    """6 significant digits: what a person reads in a file (trainers that normalise take it as is)."""
    return float(f"{x:.6g}")


def _ratios(weights: Sequence[float]) -> list[float]:
    """Readable 6-digit shares summing to 1.0 (``math.fsum``; OLMo-core checks ``np.allclose``,
    older releases ``==``): the largest takes the rounding remainder, where it changes the
    fewest digits."""
    rounded = [_num(w) for w in weights]
    big = rounded.index(max(rounded))
    rounded[big] = 0.0
    rounded[big] = round(1.0 - math.fsum(rounded), 12)
    if math.fsum(rounded) != 1.0:
        rounded[big] = 0.0
        rounded[big] = 1.0 - math.fsum(rounded)
    return rounded


@dataclass(frozen=True)
class ExportOptions:
    """Trainer settings some formats need, and how strict to be about what is missing."""

    seq_length: int | None = None
    """Tokens per training sequence: turns the token budget into samples (Megatron
    ``--train-samples``, Megatron-Bridge ``train.train_samples``, NeMo 2 ``num_train_samples``,
    MosaicML ``epoch_size``). Required by ``mosaic``."""
    global_batch_tokens: int | None = None
    """Tokens per global batch: OLMo-core's ``global_batch_size`` (OLMo-core counts it in tokens;
    required by ``olmo-core``); NeMo 2's ``global_batch_size`` (in sequences) with ``seq_length``."""
    seed: int = 42
    """The trainer's data-sampling seed, where the format has one."""
    repetition_headroom: float = 0.10
    """OLMo-core's ``max_repetition_ratio`` is the planned epochs x (1 + this): the trainer counts
    tokens with its own tokenizer and file sizes, a few percent off demix's counts; with no
    headroom 1% fewer tokens fail the build ("Insufficient tokens")."""
    allow_placeholder_paths: bool = False
    """Write a domain's name where its data path is missing (else a DemixError)."""
    require_settings: bool = True
    """Refuse a format whose required setting (``global_batch_tokens``, ``seq_length``, the
    token budget) is missing; False leaves the field out (the command backend, until it passes
    its run's settings)."""

    def __post_init__(self) -> None:
        for name in ("seq_length", "global_batch_tokens"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise DemixError(f"--{name.replace('_', '-')} is {value!r}, not a positive whole number",
                                 f"pass the trainer's {name.replace('_', ' ')} in tokens")
        if not self.repetition_headroom >= 0:
            raise DemixError(f"--repetition-headroom is {self.repetition_headroom}, below 0",
                             "use e.g. 0.1 (10% more repetition allowed than planned)")
        if self.seq_length and self.global_batch_tokens and self.global_batch_tokens % self.seq_length:
            raise DemixError(
                f"--global-batch-tokens {self.global_batch_tokens} is not a multiple of --seq-length {self.seq_length}",
                "a global batch is whole sequences: pass sequences per batch x sequence length",
            )


#: The defaults of :meth:`Exporter.render` called without options (library use, the command
#: backend): placeholder paths allowed and missing trainer settings left out.
LENIENT = ExportOptions(allow_placeholder_paths=True, require_settings=False)


@dataclass(frozen=True)
class Export:
    """What one exporter renders: the mixture chosen by ``which``, the file it came from, where
    each domain's data is, and the trainer settings."""

    best: BestMixture
    weights: dict[str, float]
    """The exported mixture: the data mixture (``which == "data"``) or the component weights."""
    which: str
    prefixes: Mapping[str, str]
    fmt: str = "json"
    options: ExportOptions = LENIENT

    def items(self, keep_zero: bool = False) -> list[tuple[str, float, str]]:
        """(domain, weight, data path) in domain order; a domain without a path is an error
        unless ``allow_placeholder_paths`` (then its name stands in)."""
        # Domains with weight 0 are left out: several trainers reject zero weights.
        chosen = [(d, float(w)) for d, w in self.weights.items() if keep_zero or w > 0]
        missing = [d for d, _ in chosen if d not in self.prefixes]
        if missing and not self.options.allow_placeholder_paths:
            raise DemixError(
                f"no data path for domain(s) {', '.join(missing)}: the {self.fmt} file would name "
                f"{'it' if len(missing) == 1 else 'them'} as the path and the trainer would fail much later",
                f"give each with --data-prefix DOMAIN=PATH (e.g. --data-prefix {missing[0]}=/data/{missing[0]}_text_document), "
                "or pass --allow-placeholder-paths to write the domain names for you to replace",
            )
        return [(d, w, self.prefixes.get(d, d)) for d, w in chosen]

    @property
    def epochs(self) -> dict[str, float | None]:
        """Passes over each domain's data at the target budget, of the data mixture whichever
        mixture is exported; empty for a file of demix < 0.2 (its epochs were computed from the
        component weights, as if they were token shares)."""
        return {} if self.best.legacy else dict(self.best.epochs or {})

    @property
    def target_tokens(self) -> int | None:
        """The token budget the plan is for (``search.target_tokens``); None in a hand-written file without one."""
        return int(self.best.target_tokens) if self.best.target_tokens else None

    @property
    def samples(self) -> int | None:
        """Training sequences for the budget (``ceil(target_tokens / seq_length)``), when both are known."""
        seq, tokens = self.options.seq_length, self.target_tokens
        return -(-tokens // seq) if seq and tokens else None

    def require(self, value: Any, what: str, fix: str) -> Any:
        """``value``; when it is None a DemixError (``require_settings``) naming the format and ``what``."""
        if value is None and self.options.require_settings:
            raise DemixError(f"the {self.fmt} format needs {what}", fix)
        return value

    def header(self, fmt: str) -> str:
        """Comment lines (``#``) saying what the numbers are: for formats that take comments."""
        return f"# demix export ({fmt}): {mixture_label(self.which)}\n"


class Exporter:
    """Base: ``render(best, prefixes, which, options)`` returns the file content; subclasses
    implement :meth:`write` on the :class:`Export` it builds."""

    name: ClassVar[str]
    unit: ClassVar[str]
    """The unit of the data mixture in this format."""
    suffix: ClassVar[str]
    description: ClassVar[str]
    trainer: ClassVar[str]
    """The trainer (and the release) whose reader this format is written for."""
    repetition: ClassVar[str]
    """What the trainer does when a domain needs more than one pass, with this file."""

    def render(self, best: BestMixture, prefixes: Mapping[str, str], which: str = DATA,
               options: ExportOptions | None = None) -> str:
        """The file content of ``best``'s data mixture (``which="data"``, the default) or of its
        component weights (``"components"``); ``options`` None is :data:`LENIENT`."""
        return self.write(self.prepare(best, prefixes, which, options))

    def prepare(self, best: BestMixture, prefixes: Mapping[str, str], which: str = DATA,
                options: ExportOptions | None = None) -> Export:
        """The checked :class:`Export` that :meth:`write` and :meth:`notes` render."""
        return Export(best, exported_mixture(best, which), which, prefixes, self.name, options or LENIENT)

    def unit_of(self, which: str = DATA) -> str:
        """The unit of the numbers written for ``which``."""
        if check_weights_kind(which) == COMPONENTS:
            return "component weight (a merge coefficient, written where the format takes a token share)"
        return self.unit

    def notes(self, x: Export) -> list[str]:
        """How to hand the file to the trainer (the flags or call that go with it), for the CLI."""
        return []

    def write(self, x: Export) -> str:  # pragma: no cover - abstract
        raise NotImplementedError


def repetition_warning(best: BestMixture, fmt: str, which: str = DATA) -> str | None:
    """A warning when the data mixture needs more than one pass over some domain at the target
    budget (naming the domains, the trainers that repeat silently and what ``fmt``'s trainer
    does); None when no domain repeats or the epochs are unknown."""
    weights = exported_mixture(best, which)
    epochs = {} if best.legacy else best.epochs or {}
    over = {d: e for d, e in epochs.items() if e is not None and e > 1 and weights.get(d, 0) > 0}
    if not over:
        return None
    named = ", ".join(f"{d} ({e:.3g} epochs)" for d, e in over.items())
    budget = f"{int(best.target_tokens):,} tokens" if best.target_tokens else "the target budget"
    return (f"the data mixture repeats {named} at {budget}. {SILENT_REPEATERS} repeat data without a word; "
            f"{fmt}: {get_exporter(fmt).repetition}. Lower those shares or add data if repeating is not what you want.")


# --------------------------------------------------------------------------- the formats


@register
class JsonExporter(Exporter):
    name = "json"
    unit = "token share"
    suffix = ".json"
    description = "plain {domain: token share} (JSON takes no comment: `demix export` says which mixture it wrote)"
    trainer = "any (plain JSON)"
    repetition = "not a trainer format: the epochs are in best_mixture.json"

    def write(self, x: Export) -> str:
        # No paths are written, so none is required.
        return json.dumps({d: _num(w) for d, w in x.weights.items()}, indent=2) + "\n"


#: Megatron's --split for demix's plan: demix counted every token of a domain as training data
#: (its held-out split is separate); the default 969,30,1 would hold 3.1% back and repeat the rest more.
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
        return " ".join(f"{_num(w)} {p}" for _, w, p in x.items()) + "\n"

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
        pairs = " ".join(f"{_num(w)} {p}" for _, w, p in x.items())
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
            "blend": [[p for _, _, p in items], [_num(w) for _, w, _ in items]],
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
            flat += [_num(w), p]
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
            flat += [_num(w), p]
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
                "dataset": {"dataset_folder": [p for _, _, p in items], "dataset_weights": [_num(w) for _, w, _ in items]},
                "seed": x.options.seed,
            },
        }
        return x.header(self.name) + yaml.safe_dump({"data_stages": [stage]}, sort_keys=False)


def _olmo_sources(x: Export) -> list[dict[str, Any]]:
    """OLMo-core ``SourceMixtureConfig`` dicts: ratios summing to exactly 1, and a repetition
    cap of the planned epochs with headroom (see :attr:`ExportOptions.repetition_headroom`)."""
    items = x.items()
    epochs = x.epochs
    sources = []
    for (d, _, p), ratio in zip(items, _ratios([w for _, w, _ in items])):
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
                "token_shares": [_num(w) for _, w, _ in items],
                "mean_document_tokens": [_num(float(mean_len[d])) for d, _, _ in items],
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
        dataset: dict[str, Any] = {"streams": {d: {"local": p, "proportion": _num(w)} for d, w, p in items}}
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
            "combined_streaming_dataset": {"weights": [_num(w) for _, w, _ in items], "seed": x.options.seed,
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
        sources = [{"dataset": d, "dataset_path": p, "weight": _num(w), "infinite": repeats} for d, w, p in items]
        return json.dumps({"sources": sources, "seed": x.options.seed, "stopping_strategy": "on_first_exhausted",
                           "unit": "token share", "mixture": mixture_label(x.which)}, indent=2) + "\n"


def export(
    best_path: str | Path,
    fmt: str,
    prefixes: list[str] | None = None,
    weights: str = DATA,
    options: ExportOptions | None = None,
) -> str:
    """Render ``best_mixture.json`` (a file or a run directory) in format ``fmt``: its data
    mixture (``weights="data"``, the default) or its component weights (``"components"``).
    ``options`` None is strict: every domain needs a path, required settings are refused when missing."""
    check_weights_kind(weights)
    exporter = get_exporter(fmt)
    best = load_best_mixture(best_path)
    return exporter.render(best, parse_prefixes(prefixes, best.domains), weights, options or ExportOptions())
