"""Proxy kinds: the ``proxy_kind`` column of the store, one name per kind of scored model.

- ``merged``: a proxy merged from the components (the search's own evaluations);
- ``reference``: a reference model really trained on the mixture (fidelity's ground truth; not
  a proxy, but stored beside them);
- ``trained@<tokens>``: a proxy trained on the mixture with a ``<tokens>`` budget (the
  RegMix-style baseline of the fidelity stage).
"""

from __future__ import annotations

MERGED = "merged"
REFERENCE = "reference"
TRAINED = "trained"
"""A trained proxy of unstated budget (rows of stores written before budgets were compared)."""
KINDS = (MERGED, TRAINED, REFERENCE)
_TRAINED_PREFIX = f"{TRAINED}@"


def trained(tokens: int) -> str:
    """The kind of a trained proxy with a ``tokens`` budget: ``trained@<tokens>``."""
    return f"{_TRAINED_PREFIX}{int(tokens)}"


def trained_tokens(kind: str) -> int | None:
    """The token budget of a ``trained@<tokens>`` kind; None for any other kind."""
    if kind.startswith(_TRAINED_PREFIX) and kind[len(_TRAINED_PREFIX):].isdigit():
        return int(kind[len(_TRAINED_PREFIX):])
    return None


def is_known(kind: str) -> bool:
    """One of :data:`KINDS`, or ``trained@<tokens>`` with a positive budget (the fidelity stage
    compares several budgets, and a store row is unique per (mixture_key, proxy_kind))."""
    tokens = trained_tokens(kind)
    return kind in KINDS or (tokens is not None and tokens > 0)
