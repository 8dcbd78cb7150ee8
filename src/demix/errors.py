"""The one error type users see.

Every problem with a user's input (config, files, checkpoints, mixtures) is raised as a
:class:`DemixError` that names the offending thing and says how to fix it. The CLI prints it
without a traceback and exits non-zero; library users can catch it.
"""

from __future__ import annotations


class DemixError(Exception):
    """A user-facing error: ``what`` went wrong and ``fix`` says how to mend it."""

    def __init__(self, what: str, fix: str | None = None) -> None:
        self.what = what
        self.fix = fix
        super().__init__(what if not fix else f"{what}\n  fix: {fix}")


def require(module: str, extra: str | None = None):
    """Import an optional dependency, or raise a DemixError with the install hint."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        hint = f"pip install 'demix-llm[{extra}]'" if extra else f"pip install {module}"
        raise DemixError(f"optional dependency '{module}' is not installed ({exc})", hint) from exc
