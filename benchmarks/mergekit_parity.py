"""Parity of demix's merge methods with mergekit 0.1.5 on the same tiny fp32 checkpoints.

    .venv/bin/python benchmarks/mergekit_parity.py

Creates `.venv-mergekit` if missing, builds a tiny Llama base and three components (base +
small random deltas), runs every method both tools have in both, and prints the max absolute
difference per method (exact cases) or the difference in the fraction of kept delta elements
(random drops, whose RNGs differ by design; see docs/merging.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The test helpers build the checkpoints; tests/ is not installed (benchmarks/, the script's
# directory, is already first on sys.path).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _mergekit_venv import ensure_mergekit_venv  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.parse_args()
    py = ensure_mergekit_venv()
    if py is None:
        sys.exit("mergekit venv unavailable")
    from demix.merging.parity import compare_with_mergekit
    from merging.conftest import make_family

    mixture = {"general": 0.5, "math": 0.3, "code": 0.2}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base, comps = make_family(root, scale=0.02)
        rows = compare_with_mergekit(base, comps, mixture, root / "work", python=py)
    timing = rows.pop()["value"]
    print(f"\nparity with mergekit 0.1.5, fp32, tiny Llama (hidden 32, 2 layers, vocab 256), K=3, mixture {mixture}\n")
    print(f"| {'case':<58} | {'compared':<18} | {'value':>10} | tensors |")
    print(f"|{'-' * 60}|{'-' * 20}|{'-' * 12}|---------|")
    for r in rows:
        print(f"| {r['case']:<58} | {r['compare']:<18} | {r['value']:>10.3g} | {r['tensors']:>7} |")
    print(f"\nmergekit import {timing['import']:.1f} s, {len(timing['merges'])} merges {sum(timing['merges']):.1f} s")


if __name__ == "__main__":
    main()
