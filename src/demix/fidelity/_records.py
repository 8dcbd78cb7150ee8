"""The JSON form of the fidelity stage's records: written without NaN, read back with errors
that name the file.

JSON has no NaN, and an undefined statistic is NaN in memory: every file writes it as ``null``
(:func:`nan_to_none`) and every reader turns it back. A reader never lets a ``KeyError`` out of a
garbled file: :func:`read_record` turns it into a DemixError naming the file and the fix.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from demix.errors import DemixError

T = TypeVar("T")

#: How to repair any fidelity file: the stage rewrites all of them from the store, training nothing.
REWRITE = "run `demix fidelity CONFIG` again to rewrite it (stored models and scores are reused)"


def nan_to_none(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None, through nested dicts and lists."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [nan_to_none(v) for v in obj]
    return obj


def none_to_nan(value: Any) -> float:
    """A number read back from a record: None (an undefined value) becomes NaN."""
    return math.nan if value is None else float(value)


def read_record(path: str | Path, what: str, parse: Callable[[Any], T], fix: str = REWRITE) -> T:
    """``parse`` of the JSON in ``path``; a missing, unreadable or garbled file, or one whose
    content ``parse`` rejects, is a DemixError naming ``path`` as not being ``what``."""
    from demix.rundir import read_run_file

    data = read_run_file(path, fix)
    try:
        return parse(data)
    except DemixError as exc:  # a reader's own refusal (e.g. a newer format): named with the file
        raise DemixError(f"'{path}': {exc.what}", exc.fix) from None
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise DemixError(f"'{path}' is not {what} ({exc!r})", fix) from None
