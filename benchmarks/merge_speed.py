"""Speed of one in-memory linear proxy against the memory-bandwidth limit and against mergekit.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/merge_speed.py [--components 8] [--layers 12]

Builds, in a temp dir, a synthetic Llama (hidden 1024, 12 layers, vocab 32000, tied
embeddings: about 187M parameters, 374 MB in bf16) as the base and K components = base +
small random deltas, all bf16 safetensors. Then, in one run on the same machine:

- demix in-memory linear build: seconds per proxy (best of 5, after one warm-up);
- plain copy of the same bytes: a proxy reads K+1 models and writes one, (K+2) x model bytes,
  so the peer is ``dst.copy_(src)`` of (K+2)/2 x model bytes (a copy reads and writes each);
- demix merged checkpoint written to disk (streamed), for reference;
- mergekit 0.1.5 linear merge of the same checkpoints to disk (fp32 compute, bf16 output, as
  demix), timed inside its process after its imports, plus the wall time with imports.

Targets (issue 3): build >= 70% of the plain-copy bandwidth, >= 25x faster than mergekit.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from _mergekit_venv import ensure_mergekit_venv  # noqa: E402


def make_checkpoints(root: Path, k: int, layers: int, hidden: int, vocab: int) -> tuple[Path, dict[str, Path]]:
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=int(hidden * 2.75),
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        tie_word_embeddings=True,
        dtype="bfloat16",
        architectures=["LlamaForCausalLM"],
    )
    with torch.device("meta"):
        shapes = {n: p.shape for n, p in LlamaForCausalLM(cfg).named_parameters()}
    g = torch.Generator().manual_seed(0)
    base = {n: (torch.randn(s, generator=g) * 0.02).to(torch.bfloat16) for n, s in shapes.items()}
    dirs = {"base": root / "base", **{f"domain{i}": root / f"domain{i}" for i in range(k)}}
    for name, d in dirs.items():
        d.mkdir(parents=True)
        cfg.save_pretrained(d)
        if name == "base":
            tensors = base
        else:
            # Small updates from the base, as continued pretraining gives (about 5% of |w|).
            tensors = {n: (t.float() + torch.randn(t.shape, generator=g) * 1e-3).to(torch.bfloat16) for n, t in base.items()}
        save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
        del tensors
    return dirs.pop("base"), dirs


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--components", type=int, default=8)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-mergekit", action="store_true", help="skip the mergekit comparison")
    args = ap.parse_args()
    k = args.components

    from demix.merging import ComponentSet, ProxyBuilder, run_mergekit, write_merged, write_mergekit_config

    py = None if args.no_mergekit else ensure_mergekit_venv()
    with tempfile.TemporaryDirectory(dir=os.environ.get("DEMIX_BENCH_TMP")) as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        base, comps = make_checkpoints(root, k, args.layers, args.hidden, args.vocab)
        print(f"made {k} components + base in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        mixture = {d: 1.0 / k for d in comps}

        t0 = time.perf_counter()
        cs = ComponentSet.load(base, comps)
        t_load = time.perf_counter() - t0
        builder = ProxyBuilder(cs)
        n = cs.num_parameters
        model_bytes = cs.nbytes
        builder.build(mixture)  # warm-up (first touch of the output pages)
        t_build = best_of(lambda: builder.build(mixture), args.repeat)

        moved = (k + 2) * model_bytes  # (K+1) reads + 1 write
        src = cs.comp_flat[torch.bfloat16].view(-1)[: moved // 2 // 2]
        dst = torch.empty_like(src)
        dst.copy_(src)
        t_copy = best_of(functools.partial(dst.copy_, src), args.repeat)
        del dst

        t0 = time.perf_counter()
        write_merged(base, comps, mixture, root / "demix_merged")
        t_disk = time.perf_counter() - t0

        mk_merge = mk_wall = None
        if py is not None:
            yml = write_mergekit_config(
                root / "merge.yml", base, comps, mixture, "linear", {}, dtype="float32", out_dtype="bfloat16"
            )
            t0 = time.perf_counter()
            timing = run_mergekit([(yml, root / "mergekit_merged")], python=py, options={"out_shard_size": 5 * 10**9})
            mk_wall = time.perf_counter() - t0
            mk_merge = timing["merges"][0]

    load = os.getloadavg()[0]
    gb = 1e9
    print(
        f"\nlinear proxy of K={k} components, {n / 1e6:.0f}M parameters each, bf16 ({model_bytes / 1e6:.0f} MB per model); "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load:.1f} "
        f"(components loaded in {t_load:.1f} s)\n"
    )
    rows = [
        ("demix in-memory linear build", t_build, moved / t_build / gb),
        ("plain copy of the same bytes ((K+1) reads + 1 write)", t_copy, moved / t_copy / gb),
        ("demix merged checkpoint to disk (streamed)", t_disk, None),
    ]
    if mk_merge is not None:
        rows.append(("mergekit 0.1.5 linear merge to disk, after imports", mk_merge, None))
        rows.append(("mergekit 0.1.5 linear merge, wall incl. imports", mk_wall, None))
    print(f"| {'what':<55} | {'s/proxy':>8} | {'GB/s':>6} |")
    print(f"|{'-' * 57}|{'-' * 10}|{'-' * 8}|")
    for name, t, bw in rows:
        print(f"| {name:<55} | {t:>8.3f} | {'' if bw is None else f'{bw:.1f}':>6} |")
    print(f"\nbuild bandwidth / plain-copy bandwidth = {t_copy / t_build:.2f} (target >= 0.70)")
    if mk_merge is not None:
        print(
            f"speed-up over mergekit per proxy = {mk_merge / t_build:.1f}x after its imports, "
            f"{mk_wall / t_build:.1f}x wall (target >= 25x)"
        )


if __name__ == "__main__":
    main()
