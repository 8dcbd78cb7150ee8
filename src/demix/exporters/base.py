"""The export record, the registry and the trainer-neutral JSON format.

Every format module (:mod:`.megatron`, :mod:`.olmo`, :mod:`.streaming`) builds on what is here:
the checked :class:`Export` (the mixture, its data paths, the trainer settings), the unit notes,
the path rules and :func:`sum_to_one` / :func:`readable_shares` (shares a trainer accepts as
summing to 1).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from demix.errors import DemixError
from demix.search.files import BestMixture

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


def readable(x: float) -> float:
    """6 significant digits: what a person reads in a file (trainers that normalise take it as is)."""
    return float(f"{x:.6g}")


def readable_shares(weights: Sequence[float]) -> list[float]:
    """Readable 6-digit shares summing to 1.0 (``math.fsum``; OLMo-core checks ``np.allclose``,
    older releases ``==``): the largest takes the rounding remainder, where it changes the
    fewest digits."""
    rounded = [readable(w) for w in weights]
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


# --------------------------------------------------------------------------- the trainer-neutral format


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
        return json.dumps({d: readable(w) for d, w in x.weights.items()}, indent=2) + "\n"


#: Megatron's --split for demix's plan: demix counted every token of a domain as training data


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
