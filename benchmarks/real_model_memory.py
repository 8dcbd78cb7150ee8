"""Memory and speed of demix at a real size: SmolLM2-135M (134.5M parameters, bf16 on disk).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/real_model_memory.py [--base models/smollm2-135m]
        [--components 4,8] [--tokens 2048] [--threads 1,2]

Needs the converted base (``make smollm2``). The component checkpoints are NOT trained models:
they are the converted base plus small random perturbations (per tensor, Gaussian noise of
``--delta`` x the tensor's RMS, so ||delta|| / ||base|| is about ``--delta``, the paper's regime),
written as bf16 safetensors to a temporary directory. Memory and merge speed depend only on
sizes and dtypes, not on what the deltas learned.

Each measurement that needs its own resident-memory figure runs in a fresh subprocess, so no
earlier allocation is counted:

- merge K: RSS after ``import torch, transformers`` (the floor), after ``ComponentSet.load`` of
  the base + K components (the component set), after ``ProxyBuilder`` (the resident fp32 proxy),
  and the process's peak; then seconds per ``builder.build`` (best of ``--repeats``) against a
  plain ``dst.copy_(src)`` of the same bytes in the same process (a proxy reads K+1 bf16 models
  and writes one fp32 model: (K+1) x 2n + 4n bytes; a copy reads and writes each byte, so the
  peer copies half of that);
- eval (K = the first of ``--components``): on the same held-out windows of Python standard
  library source (SmolLM2's own tokenizer), demix's ``HeldoutLoss.evaluate`` on the proxy vs a
  bare ``model(input_ids=...).logits`` forward, interleaved, best of ``--repeats``;
- throughput at each of ``--threads``: training tokens/s of a bare fp32 AdamW step
  (forward + backward + optimizer step, seq 256, the recipe of demix's HF Trainer: betas
  0.9/0.95, clip 1.0) and bare evaluation tokens/s, on the base.

The machine is shared: the load average is printed with the table; compare ratios, not seconds.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SEQ_LEN = 256


def rss_mb() -> float:
    """Current resident set size in MB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # kB on Linux


def best_of(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


# --------------------------------------------------------------------------- parent: set-up


def make_components(base: Path, root: Path, k: int, delta: float) -> dict[str, Path]:
    """K perturbed copies of the base (bf16 safetensors + its config) under ``root``; reused when
    ``root/perturbation.json`` says they were made from this base with this delta."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from demix.checkpoints import weights_hash

    dirs = {f"component{i}": root / f"component{i}" for i in range(k)}
    record = {"base": weights_hash(base), "delta": delta, "seed": 0}
    made = root / "perturbation.json"
    previous = json.loads(made.read_text()) if made.is_file() else {}
    if all(previous.get(key) == value for key, value in record.items()) and previous.get("k", 0) >= k:
        return dirs
    tensors = load_file(str(base / "model.safetensors"))
    g = torch.Generator().manual_seed(0)
    for d in dirs.values():
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        shutil.copy(base / "config.json", d / "config.json")
        out = {}
        for name, t in tensors.items():
            x = t.float()
            rms = x.pow(2).mean().sqrt()
            out[name] = (x + torch.randn(x.shape, generator=g) * (delta * rms)).to(torch.bfloat16)
        save_file(out, str(d / "model.safetensors"), metadata={"format": "pt"})
        del out
    made.write_text(json.dumps({**record, "k": k}))
    return dirs


def write_heldout(base: Path, root: Path, tokens: int) -> Path:
    """Held-out windows of stdlib source in SmolLM2's tokenizer, packed the way demix packs them."""
    from transformers import AutoTokenizer

    from demix.packing import PackedWriter

    tok = AutoTokenizer.from_pretrained(str(base))
    prefix = root / "heldout"
    writer = PackedWriter(prefix, len(tok), tok.eos_token_id)
    n = 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        text = path.read_text(errors="replace")
        ids = tok(text, add_special_tokens=False)["input_ids"]
        writer.add(ids, len(text.encode()))
        n += len(ids) + 1
        if n > tokens + SEQ_LEN + 1:
            break
    writer.close()
    return prefix


# --------------------------------------------------------------------------- children


def child_merge(args: argparse.Namespace) -> dict:
    import torch
    import transformers  # noqa: F401  (counted in the floor, as in any demix process)

    from demix.merging import ComponentSet, ProxyBuilder

    floor = rss_mb()
    comps = json.loads(args.comps)
    k = len(comps)
    t0 = time.perf_counter()
    cs = ComponentSet.load(args.base, comps)
    t_load = time.perf_counter() - t0
    after_set = rss_mb()
    builder = ProxyBuilder(cs, dtype="float32")
    after_proxy = rss_mb()
    mixture = {d: 1.0 / k for d in comps}
    builder.build(mixture)  # warm-up: first touch of the output pages
    t_build = best_of(lambda: builder.build(mixture), args.repeats)
    peak = peak_rss_mb()  # before the copy peer allocates its own buffer
    n = cs.num_parameters
    moved = (k + 1) * 2 * n + 4 * n
    src = cs.comp_flat[torch.bfloat16].view(-1).view(torch.uint8)[: moved // 2]
    dst = torch.empty_like(src)
    dst.copy_(src)
    t_copy = best_of(functools.partial(dst.copy_, src), args.repeats)
    del dst, src
    out = {
        "k": k,
        "params": n,
        "model_bytes": cs.nbytes,
        "floor_mb": floor,
        "set_mb": after_set - floor,
        "proxy_mb": after_proxy - after_set,
        "peak_mb": peak - floor,
        "load_s": t_load,
        "build_s": t_build,
        "copy_s": t_copy,
        "moved": moved,
    }
    if args.eval_prefix:
        out.update(eval_paths(builder.model, args))
    return out


def eval_paths(model, args: argparse.Namespace) -> dict:
    import torch
    from transformers import AutoTokenizer

    from demix.evaluation.heldout import HeldoutLoss, load_heldout_set, token_byte_lengths

    tok = AutoTokenizer.from_pretrained(args.base)
    heldout = load_heldout_set(args.eval_prefix, "stdlib", SEQ_LEN, args.tokens, token_byte_lengths(tok))
    evaluator = HeldoutLoss({"stdlib": heldout}, args.batch)
    inputs = heldout.inputs

    @torch.inference_mode()
    def bare() -> None:
        for start in range(0, len(inputs), args.batch):
            _ = model(input_ids=inputs[start : start + args.batch], use_cache=False).logits

    scores = evaluator.evaluate(model)["stdlib"]
    paths = [("bare", bare), ("demix", lambda: evaluator.evaluate(model))]
    times = {label: float("inf") for label, _ in paths}
    for r in range(args.repeats):
        for label, fn in paths[r % 2 :] + paths[: r % 2]:
            times[label] = min(times[label], best_of(fn, 1))
    return {"eval_tokens": int(inputs.numel()), "eval_s": times, "proxy_bpb": scores["bits_per_byte"]}


def child_throughput(args: argparse.Namespace) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, model.config.vocab_size, (args.batch, SEQ_LEN), generator=g)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95))

    def step() -> None:
        model(input_ids=x, labels=x).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up: optimizer state and first-touch allocations
    t_train = best_of(step, args.repeats)
    model.eval()

    @torch.inference_mode()
    def forward() -> None:
        _ = model(input_ids=x, use_cache=False).logits

    forward()
    t_eval = best_of(forward, args.repeats)
    return {"threads": args.threads, "tokens": x.numel(), "train_s": t_train, "eval_s": t_eval, "peak_mb": peak_rss_mb()}


def run_child(kind: str, **kw) -> dict:
    cmd = [sys.executable, __file__, "--child", kind]
    for key, value in kw.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    env = dict(os.environ)
    if "threads" in kw:
        env["OMP_NUM_THREADS"] = str(kw["threads"])
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"{kind} child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="models/smollm2-135m")
    ap.add_argument("--components", default="4,8")
    ap.add_argument("--tokens", type=int, default=2048, help="held-out tokens per evaluation pass")
    ap.add_argument("--threads", default="1,2", help="thread counts of the throughput rows")
    ap.add_argument("--batch", type=int, default=4, help="sequences of 256 tokens per forward (and per training step)")
    ap.add_argument("--delta", type=float, default=0.05, help="perturbation: noise RMS as a fraction of each tensor's RMS")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", type=Path, help="keep the perturbed components here and reuse them (default: a temp dir, removed)")
    ap.add_argument("--child", choices=["merge", "throughput"], help=argparse.SUPPRESS)
    ap.add_argument("--comps", help=argparse.SUPPRESS)
    ap.add_argument("--eval-prefix", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child == "merge":
        print(json.dumps(child_merge(args)))
        return
    if args.child == "throughput":
        args.threads = int(args.threads)
        print(json.dumps(child_throughput(args)))
        return

    base = Path(args.base)
    if not (base / "model.safetensors").is_file():
        sys.exit(f"no converted base at {base}: run `make smollm2` (or scripts/convert_smollm2.py --out {base})")
    ks = [int(k) for k in args.components.split(",") if k]
    threads = [int(t) for t in args.threads.split(",") if t]
    import torch

    load0 = os.getloadavg()[0]
    rows, tput = [], []
    with tempfile.TemporaryDirectory(dir=os.environ.get("DEMIX_BENCH_TMP")) as tmp:
        root = Path(tmp)
        if args.workdir is not None:
            args.workdir.mkdir(parents=True, exist_ok=True)
            root = args.workdir
        t0 = time.perf_counter()
        comps = make_components(base, root, max(ks), args.delta)
        prefix = write_heldout(base, root, args.tokens)
        print(f"wrote {max(ks)} perturbed components (delta {args.delta:.0%} of each tensor's RMS) in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr)
        for i, k in enumerate(ks):
            sub = {d: str(p) for d, p in list(comps.items())[:k]}
            kw = {"base": base, "comps": json.dumps(sub), "repeats": args.repeats, "batch": args.batch, "tokens": args.tokens}
            if i == 0:
                kw["eval_prefix"] = prefix
            rows.append(run_child("merge", **kw))
            print(f"merge K={k} done", file=sys.stderr)
    for t in threads:
        tput.append(run_child("throughput", base=base, threads=t, repeats=args.repeats, batch=args.batch))
        print(f"throughput {t} thread(s) done", file=sys.stderr)
    load1 = os.getloadavg()[0]

    n, mb = rows[0]["params"], rows[0]["model_bytes"] / 1e6
    print(
        f"\nSmolLM2-135M ({n / 1e6:.1f}M parameters, {mb:.0f} MB per model in bf16), resident proxy in fp32; "
        f"torch {torch.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
        f"{os.cpu_count()} CPUs, load average {load0:.1f} -> {load1:.1f} (shared machine).\n"
        f"Components are the base + random perturbations ({args.delta:.0%} of each tensor's RMS), not trained models.\n"
    )
    print(f"| {'K':>2} | {'component set MB':>16} | {'(K+1) x bf16 MB':>15} | {'proxy MB':>8} | {'fp32 model MB':>13} | "
          f"{'peak MB':>7} | {'build s':>7} | {'copy s':>6} | {'build GB/s':>10} | {'copy GB/s':>9} | {'build/copy bw':>13} |")
    print(f"|{'-' * 4}|{'-' * 18}|{'-' * 17}|{'-' * 10}|{'-' * 15}|{'-' * 9}|{'-' * 9}|{'-' * 8}|{'-' * 12}|{'-' * 11}|{'-' * 15}|")
    for r in rows:
        k = r["k"]
        bw_build = r["moved"] / r["build_s"] / 1e9
        bw_copy = r["moved"] / r["copy_s"] / 1e9
        print(f"| {k:>2} | {r['set_mb']:>16.0f} | {(k + 1) * mb:>15.0f} | {r['proxy_mb']:>8.0f} | {2 * mb:>13.0f} | "
              f"{r['peak_mb']:>7.0f} | {r['build_s']:>7.3f} | {r['copy_s']:>6.3f} | {bw_build:>10.1f} | {bw_copy:>9.1f} | "
              f"{r['copy_s'] / r['build_s']:>13.2f} |")
    print("MB are RSS increments over the process after `import torch, transformers` "
          f"({rows[0]['floor_mb']:.0f} MB); peak: the process's peak RSS up to the last proxy build (before the copy peer "
          "allocates its buffer) minus that floor. build/copy bw: the proxy build's bandwidth as a share of a plain copy "
          "of the same bytes.\n")

    e = rows[0]
    ev = e["eval_s"]
    bare_tps, ours_tps = e["eval_tokens"] / ev["bare"], e["eval_tokens"] / ev["demix"]
    print(f"held-out evaluation of the K={e['k']} proxy on {e['eval_tokens']} tokens (batch {args.batch} x {SEQ_LEN}): "
          f"bare forward {bare_tps:.0f} tok/s, demix HeldoutLoss {ours_tps:.0f} tok/s, demix/bare = {ours_tps / bare_tps:.1%} "
          f"(proxy bits per byte {e['proxy_bpb']:.3f})\n")
    if not tput:
        return
    print(f"| {'threads':>7} | {'train tok/s':>11} | {'eval tok/s':>10} | {'peak MB (train)':>15} |")
    print(f"|{'-' * 9}|{'-' * 13}|{'-' * 12}|{'-' * 17}|")
    for t in tput:
        print(f"| {t['threads']:>7} | {t['tokens'] / t['train_s']:>11.0f} | {t['tokens'] / t['eval_s']:>10.0f} | {t['peak_mb']:>15.0f} |")
    print(f"training: bare fp32 AdamW step on {args.batch} x {SEQ_LEN} tokens; evaluation: bare forward on the same batch.")
    if len(tput) > 1:
        a, b = tput[0], tput[-1]
        print(f"{b['threads']} threads / {a['threads']} thread(s): train {a['train_s'] / b['train_s']:.2f}x, "
              f"eval {a['eval_s'] / b['eval_s']:.2f}x")


if __name__ == "__main__":
    main()
