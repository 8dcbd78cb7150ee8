"""Create the separate mergekit venv the merging benchmarks compare against (if missing)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv-mergekit"


def ensure_mergekit_venv() -> Path | None:
    """`.venv-mergekit` with torch 2.13.0 and mergekit 0.1.5 (its pins may clash with demix's,
    hence its own venv). Returns its python, or None when it cannot be installed."""
    py = VENV / "bin" / "python"
    if (VENV / "bin" / "mergekit-yaml").is_file():
        return py
    print(f"creating {VENV} (torch==2.13.0, mergekit==0.1.5) ...", file=sys.stderr)
    try:
        subprocess.run(["python3", "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "torch==2.13.0", "mergekit==0.1.5"], check=True)
    except subprocess.CalledProcessError as exc:
        print(f"could not install mergekit: {exc}", file=sys.stderr)
        return None
    return py
