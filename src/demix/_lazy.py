"""Lazy package attributes (PEP 562), so that ``import demix.<package>`` stays light: a name is
imported from its module the first time someone asks for it, not when the package loads."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any


def lazy_attribute(package: str, names: Mapping[str, str], name: str) -> Any:
    """``names[name]`` (a module path) imported and its ``name`` returned; the body of a
    package's ``__getattr__``."""
    if name in names:
        return getattr(importlib.import_module(names[name]), name)
    raise AttributeError(f"module '{package}' has no attribute {name!r}")
