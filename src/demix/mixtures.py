"""Mixtures: validation, keys, parsing, the token-proportional prior, and rows <-> dicts.

A mixture is a dict ``{domain: weight}`` with non-negative weights summing to 1, every domain
known. It is one of two kinds, never blurred (:mod:`demix.data_mixture`): *component weights*,
the merge coefficients of a proxy (what the search samples and ranks, and what
:func:`mixture_key` keys the store's proxies by), or a *data mixture*, token shares of training
data (what a model is trained on; a proxy of component weights ``a`` stands for the data
mixture ``a @ M``). The functions here work on either; the caller says which it holds.
Sampling inside bounds is :mod:`demix.sampling`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from demix.errors import DemixError
from demix.rundir import DuplicateKeyError, loads_json

#: Tolerance on the sum of weights (mixtures read from JSON/YAML carry rounding).
SUM_TOLERANCE = 1e-6


def validate_mixture(
    weights: Mapping[str, float], domains: Sequence[str], normalize: bool = False
) -> dict[str, float]:
    """Check a mixture and return it as ``{domain: weight}`` in ``domains`` order.

    Domains missing from ``weights`` get weight 0. Raises DemixError for an empty mixture,
    unknown domains, negative or non-finite weights, or (unless ``normalize``) weights that do
    not sum to 1.
    """
    if not weights:
        raise DemixError("the mixture is empty", f"give a weight to at least one of the domains {list(domains)}")
    unknown = [d for d in weights if d not in domains]
    if unknown:
        raise DemixError(
            f"the mixture names unknown domain(s) {unknown}", f"use only the run's domains {list(domains)}"
        )
    out = {d: float(weights.get(d, 0.0)) for d in domains}
    bad = {d: w for d, w in out.items() if not math.isfinite(w) or w < 0}
    if bad:
        raise DemixError(f"mixture weights must be finite and non-negative, got {bad}", "fix those weights")
    total = sum(out.values())
    if total <= 0:
        raise DemixError("the mixture's weights are all zero", "give a positive weight to at least one domain")
    if abs(total - 1.0) > SUM_TOLERANCE:
        if not normalize:
            raise DemixError(
                f"the mixture's weights sum to {total:.6g}, not 1",
                "give weights that sum to 1, or ask for normalisation (--normalize / merge.normalize: true)",
            )
    out = {d: w / total for d, w in out.items()}
    return out


def mixture_key(mixture: Mapping[str, float], digits: int = 6) -> str:
    """A stable identity for a mixture: weights rounded to ``digits`` decimals, hashed.

    Two mixtures with the same key are the same evaluation (the store never evaluates a key twice).
    """
    canon = {d: round(float(w), digits) for d, w in sorted(mixture.items()) if round(float(w), digits) != 0}
    return hashlib.sha1(json.dumps(canon, sort_keys=True).encode()).hexdigest()[:16]


def parse_mixture(text: str, kind: str = "components") -> dict[str, float]:
    """Parse a mixture from the command line: JSON (``{"general": 0.5, ...}``), a path to a
    JSON file, or ``general=0.5,math=0.3,code=0.2``. From a ``best_mixture.json`` it takes the
    ``component_weights`` (``kind="components"``: what a proxy is merged from) or the
    ``data_mixture`` (``kind="data"``: what a model is trained on).

    Every CLI option that takes a mixture comes here. A domain given twice is an error (JSON and
    pairs alike would otherwise keep the last value without a word), and so is a weight that is
    not a number; errors about a file name it."""
    text = text.strip()
    if text.startswith("{"):
        return _json_mixture(text, f"mixture '{text}'", 'write it as {"general": 0.5, "math": 0.5}')
    if text.endswith(".json"):
        return _mixture_file(Path(text), kind)
    return _pairs_mixture(text)


def _pairs_mixture(text: str) -> dict[str, float]:
    data: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = (x.strip() for x in part.partition("="))
        if not sep:
            raise DemixError(f"mixture part '{part}' has no '='", "write the mixture as general=0.5,math=0.5")
        if name in data:
            raise DemixError(
                f"domain '{name}' is given twice in the mixture '{text}' ({name}={data[name]:g} and {name}={value})",
                "give each domain once",
            )
        try:
            data[name] = float(value)
        except ValueError:
            raise DemixError(f"mixture weight '{value}' for '{name}' is not a number") from None
    return data


def _mixture_file(path: Path, kind: str = "components") -> dict[str, float]:
    if not path.is_file():
        raise DemixError(f"mixture file '{path}' does not exist", "pass an existing JSON file or domain=weight pairs")
    fix = 'write the file as {"general": 0.5, "math": 0.5} (or pass a best_mixture.json)'
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DemixError(f"mixture file '{path}' cannot be read ({exc})", fix) from None
    return _json_mixture(text, f"mixture file '{path}'", fix, best_mixture=kind)


def _json_mixture(text: str, what: str, fix: str, best_mixture: str | None = None) -> dict[str, float]:
    """``{domain: weight}`` from JSON text; ``what`` names the source in errors. With
    ``best_mixture`` ("components" or "data") a best_mixture.json gives that mixture."""
    try:
        data = loads_json(text)
    except DuplicateKeyError as exc:
        raise DemixError(f"domain '{exc.key}' is given twice in the {what}", "give each domain once") from None
    except json.JSONDecodeError as exc:
        raise DemixError(f"{what} is not valid JSON ({exc})", fix) from None
    if best_mixture and isinstance(data, dict) and {"weights", "component_weights", "data_mixture"} & set(data):
        data = _best_mixture_part(data, best_mixture, what)
    if not isinstance(data, dict):
        raise DemixError(f"{what} is not a mapping of domain to weight", fix)
    out = {}
    for name, weight in data.items():
        # bool is an int to Python, but `true` is no weight.
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise DemixError(f"in the {what}, weight {weight!r} for '{name}' is not a number", fix)
        out[str(name)] = float(weight)
    return out


def prior_weights(
    domains: Sequence[str], kind: str = "tokens", token_counts: Mapping[str, float] | None = None
) -> np.ndarray:
    """The sampling centre of the component weights before temperature: the domains' token
    shares (``tokens``; a prior over component weights, not a data mixture) or ``uniform``."""
    if kind == "uniform":
        return np.full(len(domains), 1.0 / len(domains))
    if kind != "tokens":
        raise DemixError(f"unknown prior '{kind}'", "use search.sampler.prior: tokens or uniform")
    if token_counts is None:
        raise DemixError("the token prior needs the domain token counts", "run `demix prepare` first, or set search.sampler.prior: uniform")
    missing = [d for d in domains if d not in token_counts]
    if missing:
        raise DemixError(f"no token count for domain(s) {missing}", "run `demix prepare` first")
    counts = np.array([float(token_counts[d]) for d in domains])
    return counts / counts.sum()


def rows_to_mixtures(domains: Sequence[str], weights: np.ndarray) -> list[dict[str, float]]:
    """Rows of an (n, K) array as ``{domain: weight}`` dicts."""
    return [{d: float(v) for d, v in zip(domains, row)} for row in np.atleast_2d(weights)]


def mixtures_to_rows(domains: Sequence[str], mixtures: Sequence[Mapping[str, float]]) -> np.ndarray:
    """``{domain: weight}`` dicts as an (n, K) array (missing domains: 0)."""
    return np.array([[float(m.get(d, 0.0)) for d in domains] for m in mixtures], dtype=float).reshape(len(mixtures), len(domains))


def _best_mixture_part(data: Mapping[str, object], kind: str, what: str) -> object:
    """The component weights or the data mixture of a best_mixture.json's JSON object. A file of
    demix < 0.2 holds ``weights``, which were component weights: never taken as a data mixture."""
    if kind == "components":
        if "component_weights" in data:
            return data["component_weights"]
        if "weights" in data:
            return data["weights"]
        raise DemixError(f"the {what} holds no component_weights (only a data mixture)",
                         "pass the component weights to merge, or the best_mixture.json a search wrote")
    if "data_mixture" in data:
        return data["data_mixture"]
    if "weights" in data:
        raise DemixError(
            f"the {what} was written by demix < 0.2: its 'weights' are the component weights of the merged proxies, "
            "not the data mixture to train on",
            "rerun `demix search` on its run directory (nothing is evaluated again) to write the data mixture",
        )
    raise DemixError(f"the {what} holds no data_mixture", "pass a data mixture, or rerun `demix search`")

