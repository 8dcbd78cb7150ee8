"""Write a transfer corpus for the demo domains: Python source that no component trains on.

The built-in `code` corpus is one half of the standard library's modules (by a hash of the
path); the other half's docstrings feed `general`, but its code is in no domain. This writes
that other half's source files, one document each (stable order), as jsonl: a code corpus
close to `code` in kind and absent from every component's training data, for
`fidelity.transfer` (docs/fidelity.md, section 6).

usage: python benchmarks/fidelity_transfer_corpus.py --out /tmp/transfer/stdlib_other.jsonl [--max-bytes 400000]
       then: -s 'fidelity.transfer=[{name: stdlib_other, source: /tmp/transfer/stdlib_other.jsonl, license: PSF-2.0}]'
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="jsonl file to write (never an existing file of yours: refused)")
    ap.add_argument("--max-bytes", type=int, default=400_000, help="stop after this many bytes of source")
    args = ap.parse_args()
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"{out} exists; choose another path (this script never overwrites a file)")

    # The same file list and halving as builtin:code (demix.corpora.builtin), the other half.
    from demix.corpora.builtin import _stdlib_files, _stdlib_half

    out.parent.mkdir(parents=True, exist_ok=True)
    total = docs = 0
    with out.open("w", encoding="utf-8") as fh:
        for path in _stdlib_files():
            if _stdlib_half(path) != 1:
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            if not text.strip():
                continue
            fh.write(json.dumps({"text": text}) + "\n")
            total += len(text.encode("utf-8"))
            docs += 1
            if total >= args.max_bytes:
                break
    print(f"wrote {out}: {docs} documents, {total:,} bytes (PSF-2.0: Python standard library)")


if __name__ == "__main__":
    main()
