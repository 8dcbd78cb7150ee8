"""The house rules of src/demix: imports run downwards, and the ground floor loads no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "demix"

#: Module prefix -> the modules allowed to import it (everything above it).
UPPER_FLOORS = {
    "demix.cli": ("demix.cli", "demix.__main__"),
    "demix.pipeline": ("demix.cli",),
    "demix.report": ("demix.cli", "demix.pipeline", "demix.report"),
}

#: Modules that anything may import without paying for torch, transformers or LightGBM.
LIGHT = ["demix", "demix.config", "demix.checkpoints", "demix.rundir", "demix.mixtures", "demix.sampling",
         "demix.proxy_kind", "demix.store", "demix.search", "demix.report", "demix.training", "demix.fidelity"]


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every demix module ``path`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m == "demix" or m.startswith("demix.")}


@pytest.mark.parametrize("upper", sorted(UPPER_FLOORS))
def test_no_import_runs_up_to_a_higher_floor(upper):
    allowed = UPPER_FLOORS[upper]
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        name = _module(path)
        if name.startswith(allowed):
            continue
        offenders += [f"{name} imports {m}" for m in _imports(path) if m == upper or m.startswith(upper + ".")]
    assert not offenders, offenders


def test_the_light_modules_import_no_heavy_library():
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in LIGHT)
        + "heavy = [m for m in ('torch', 'transformers', 'lightgbm', 'ray', 'matplotlib') if m in sys.modules]\n"
        + "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing {LIGHT} loaded {out.stdout.strip()}"
