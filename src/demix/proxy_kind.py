"""Proxy kinds: the ``proxy_kind`` column of the store, one name per kind of scored model.

- ``merged``: a proxy merged from the components (the search's own evaluations);
- ``reference``: a reference model really trained on the mixture (fidelity's ground truth; not
  a proxy, but stored beside them);
- ``trained@<tokens>``: a proxy trained on the mixture with a ``<tokens>`` budget (the
  RegMix-style baseline of the fidelity stage);
- ``screened@<fraction>``: a merged proxy scored on a ``<fraction>`` of each lm_eval task's
  documents (``search.screening``): never fitted, never mistaken for a full ``merged`` score.
"""

from __future__ import annotations

MERGED = "merged"
REFERENCE = "reference"
TRAINED = "trained"
"""A trained proxy of unstated budget (rows of stores written before budgets were compared)."""
KINDS = (MERGED, TRAINED, REFERENCE)
_TRAINED_PREFIX = f"{TRAINED}@"
SCREENED = "screened"
_SCREENED_PREFIX = f"{SCREENED}@"


def trained(tokens: int) -> str:
    """The kind of a trained proxy with a ``tokens`` budget: ``trained@<tokens>``."""
    return f"{_TRAINED_PREFIX}{int(tokens)}"


def trained_tokens(kind: str) -> int | None:
    """The token budget of a ``trained@<tokens>`` kind; None for any other kind."""
    if kind.startswith(_TRAINED_PREFIX) and kind[len(_TRAINED_PREFIX):].isdigit():
        return int(kind[len(_TRAINED_PREFIX):])
    return None


def screened(fraction: float) -> str:
    """The kind of a merged proxy screened on ``fraction`` of each task's documents:
    ``screened@<fraction>`` (the fraction in its shortest exact form, e.g. ``screened@0.25``), so
    that screened scores of two fractions never share a row."""
    return f"{_SCREENED_PREFIX}{float(fraction)!r}"


def screened_fraction(kind: str) -> float | None:
    """The document fraction of a ``screened@<fraction>`` kind; None for any other kind."""
    if not kind.startswith(_SCREENED_PREFIX):
        return None
    try:
        return float(kind[len(_SCREENED_PREFIX):])
    except ValueError:
        return None


def is_known(kind: str) -> bool:
    """One of :data:`KINDS`, ``trained@<tokens>`` with a positive budget (the fidelity stage
    compares several budgets, and a store row is unique per (mixture_key, proxy_kind)), or
    ``screened@<fraction>`` with a fraction in (0, 1]."""
    tokens = trained_tokens(kind)
    fraction = screened_fraction(kind)
    return (kind in KINDS or (tokens is not None and tokens > 0)
            or (fraction is not None and 0 < fraction <= 1))
