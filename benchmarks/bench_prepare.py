"""Benchmark of `demix prepare` on the demo preset: time per phase, and packing throughput as a
ratio to the bare Rust tokenizer on the same documents (the peer measured in the same run).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_prepare.py [--config src/demix/configs/demo.yaml]

Prints a table; exits 0. Nothing is asserted: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from demix.config import load_config
from demix.corpora import open_corpus, split_documents
from demix.prepare import prepare
from demix.rundir import RunDir
from demix.tokenizer import load_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="src/demix/configs/demo.yaml")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(args.config, [f"output_dir={tmp}/run"])
        run = RunDir(cfg.run_dir)
        t0 = time.perf_counter()
        c0 = time.process_time()
        result = prepare(cfg, run, progress=False)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        t1 = time.perf_counter()
        prepare(cfg, run, progress=False)
        skip = time.perf_counter() - t1

        # Peer: the bare tokenizer on exactly the packed documents (already read into memory).
        tok = load_tokenizer(run.tokenizer)
        rows = []
        for d in cfg.data.domains:
            texts = [t for _, t in split_documents(open_corpus(d).documents(), cfg.data.seed, cfg.data.heldout_fraction,
                                                    cfg.data.max_heldout_documents)]
            nbytes = sum(len(t.encode()) for t in texts)
            t2 = time.perf_counter()
            tok.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
            peer = time.perf_counter() - t2
            splits = result["domains"][d.name]["splits"]
            rows.append((d.name, nbytes, splits["train"]["tokens"] + splits["heldout"]["tokens"], peer))

    total_bytes = sum(r[1] for r in rows)
    peer_total = sum(r[3] for r in rows)
    print(f"{'domain':<14} {'MB':>6} {'tokens':>9} {'bytes/token':>11} {'bare encode s':>13}")
    for name, nbytes, ntok, peer in rows:
        print(f"{name:<14} {nbytes / 1e6:6.2f} {ntok:9,d} {nbytes / ntok:11.2f} {peer:13.2f}")
    print(f"\nprepare (read + split + BPE training + tokenise + pack), {total_bytes / 1e6:.1f} MB: "
          f"{wall:.1f} s wall, {cpu:.1f} s CPU; re-run (skipped): {skip:.2f} s")
    print(f"bare tokenizer on the same text: {peer_total:.1f} s = {total_bytes / 1e6 / peer_total:.2f} MB/s")
    print(f"ratio prepare / bare encode: {wall / peer_total:.1f}x (prepare also reads, trains the BPE and writes)")


if __name__ == "__main__":
    main()
