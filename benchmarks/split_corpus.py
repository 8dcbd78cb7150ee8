"""Split a built-in corpus into same-distribution parts, as jsonl files: two domains that are as
close as two domains can be (like two crawls of one source), for fidelity experiments where a
domain's held-out loss depends on more than its own weight.

Each document goes to a part by a keyed hash of its text, so the split is deterministic and
independent of the held-out split (which hashes with the data seed).

usage: python benchmarks/split_corpus.py --builtin code --out /tmp/close --parts 2
       -> /tmp/close/code_a.jsonl, /tmp/close/code_b.jsonl; then, in a config:
          data.domains=[..., {name: code_a, source: /tmp/close/code_a.jsonl, license: PSF-2.0}, ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--builtin", required=True, help="built-in corpus name (general, math, math_problems, code)")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--parts", type=int, default=2, help="number of parts (2-26)")
    args = ap.parse_args()
    if not 2 <= args.parts <= 26:
        raise SystemExit("--parts must be between 2 and 26")

    from demix.config import DomainConfig
    from demix.corpora import open_corpus

    corpus = open_corpus(DomainConfig(name=args.builtin, source=f"builtin:{args.builtin}"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = [f"{args.builtin}_{chr(ord('a') + i)}" for i in range(args.parts)]
    files = {n: (out / f"{n}.jsonl").open("w", encoding="utf-8") for n in names}
    counts = dict.fromkeys(names, 0)
    sizes = dict.fromkeys(names, 0)
    try:
        for text in corpus.documents():
            h = hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=b"demix-split-corpus").digest()
            name = names[int.from_bytes(h, "little") % args.parts]
            files[name].write(json.dumps({"text": text}) + "\n")
            counts[name] += 1
            sizes[name] += len(text.encode("utf-8"))
    finally:
        for f in files.values():
            f.close()
    print(f"{args.builtin} ({corpus.license}):")
    for n in names:
        print(f"  {out / (n + '.jsonl')}: {counts[n]} documents, {sizes[n] / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
