"""Evaluation at its cost floor: shared-context multiple-choice scoring against the harness, and
screening, on the shipped multiple-choice tasks.

On one model (``--model``: a pretrained checkpoint directory with its tokenizer, e.g.
models/smollm2-135m; default: a tiny random Llama on a BPE trained here), in one process:

1. Per shipped multiple-choice task (demix_math, demix_humaneval, demix_heldout_mc_general and
   _code built from the tiny run's held-out documents, tokenised with the model's tokenizer):
   forward tokens (what the model is run on, padding included, counted by a forward hook) and
   wall time per item of demix's shared-context path and of the harness's per-request path
   (``evaluation.lm_eval_path: harness``) on the same model and requests; interleaved, best of
   ``--repeats`` after one warm-up call each. Identical-scores check: the largest difference of a
   request's log-likelihood and whether every metric value is equal.
2. Screening over one round of ``--proxies`` proxies (the model plus ``--proxies``-weighted sums
   of three random deltas of 5% of each tensor's mean magnitude, merged in fp32 in memory): every
   proxy scored on ``--fraction`` of each task's items and in full; Spearman of the screened
   against the full objective (mean accuracy over the tasks), and the round's evaluation time
   with screening (all screened + the full set for the best half) over without.

Targets: >= 2.5x fewer forward tokens and >= 2x less wall time than the harness on 4-choice
tasks, identical scores; screening that halves a round's evaluation time with Spearman >= 0.95.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/eval_cost.py [--model models/smollm2-135m]
        [--items 40,8,24] [--repeats 1] [--proxies 6] [--fraction 0.25]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

TASKS = ("demix_math", "demix_humaneval", "demix_heldout_mc_general", "demix_heldout_mc_code")


def load_model(path: str | None):
    """(model fp32 in eval mode, tokenizer, description)."""
    if path:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        # fp32 on this CPU: bf16 matmuls run far below fp32 speed here (docs FACTS).
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        return model, tokenizer, f"{Path(path).name} (pretrained)"
    from helpers.models import tiny_llama
    from helpers.tiny_data import DOMAINS, domain_documents, train_tokenizer

    tokenizer = train_tokenizer([t for d in DOMAINS for t in domain_documents(d, 40, seed=0)], vocab_size=1024)
    model = tiny_llama(len(tokenizer), hidden=128, layers=4, heads=4, max_positions=4096)
    return model, tokenizer, "tiny random Llama"


def build_tasks(root: Path, tokenizer, max_answer_tokens: int) -> Path:
    from demix.evaluation.local_tasks import materialize_tasks
    from demix.packing import PackedTokens
    from helpers.tiny_data import domain_documents, pack

    heldout = {}
    for d in ("general", "code"):
        pack(root / d / "heldout", tokenizer, domain_documents(d, 60, seed=1))
        heldout[d] = PackedTokens(root / d / "heldout")
    dest = root / "tasks"
    materialize_tasks(dest, TASKS, seed=0, heldout=heldout, tokenizer=tokenizer, max_answer_tokens=max_answer_tokens)
    return dest


class TokenCounter:
    """Counts the tokens every forward pass of ``model`` is run on."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.tokens = 0
        self.calls = 0
        model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.tokens += int(ids.numel())
        self.calls += 1


def ll_requests(harness):
    out = []
    for name, task in harness.task_dict["tasks"].items():
        task.build_all_requests(samples=harness.samples.get(name), rank=0, world_size=1)
        out += [i for i in task.instances if i.request_type == "loglikelihood"]
    return out


def compare_paths(model, tokenizer, task_dir: Path, items: dict[str, int], repeats: int, batch: int, tasks=TASKS) -> list[dict]:
    from demix.evaluation.benchmarks import Benchmark
    from demix.evaluation.harness import Harness

    counter = TokenCounter(model)
    rows = []
    for task in tasks:
        bench = [Benchmark(task, "lm_eval", None, None, task=task, limit=items[task])]
        paths = {
            "demix": Harness(bench, [task_dir], tokenizer, batch_size=batch, shared_context=True),
            "harness": Harness(bench, [task_dir], tokenizer, batch_size=batch, shared_context=False),
        }
        values, tokens, times = {}, {}, {k: float("inf") for k in paths}
        for label, h in paths.items():
            values[label] = h.evaluate(model)  # warm-up: builds the requests, runs the self-check
        for r in range(repeats):
            order = list(paths.items()) if r % 2 == 0 else list(paths.items())[::-1]
            for label, h in order:
                before = counter.tokens
                start = time.perf_counter()
                values[label] = h.evaluate(model)
                times[label] = min(times[label], time.perf_counter() - start)
                tokens[label] = counter.tokens - before
        # Identical scores, request by request, on the same LM wrapper and requests.
        lm = paths["demix"]._lm_for(model)
        reqs = ll_requests(paths["demix"])
        fast = lm.loglikelihood(reqs)
        lm.shared_context = False
        slow = lm.loglikelihood(reqs)
        lm.shared_context = True
        diff = max(abs(a[0] - b[0]) for a, b in zip(fast, slow))
        rel = max(abs(a[0] - b[0]) / max(1.0, abs(b[0])) for a, b in zip(fast, slow))
        n_items = values["demix"][1][task]["samples"]
        choices = len(reqs) / n_items
        rows.append({
            "task": task, "items": n_items, "choices": choices, "tokens": tokens, "times": times,
            "same_metrics": values["demix"][0] == values["harness"][0], "ll_diff": diff, "ll_rel": rel,
            "value": values["demix"][0][task], "check": lm.shared_context_check,
        })
    return rows


def screening_round(
    model, tokenizer, task_dir: Path, items: dict[str, int], proxies: int, fraction: float, batch: int, tasks=TASKS
) -> dict:
    from scipy.stats import spearmanr

    from demix.evaluation.benchmarks import Benchmark
    from demix.evaluation.harness import Harness
    from demix.evaluation.screening import screening_samples, survivors

    bench = [Benchmark(t, "lm_eval", None, None, task=t, limit=items[t]) for t in tasks]
    harness = Harness(bench, [task_dir], tokenizer, batch_size=batch)
    subsets = screening_samples(harness, fraction)
    gen = torch.Generator().manual_seed(0)
    base = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    deltas = [{k: 0.05 * v.abs().mean() * torch.randn(v.shape, generator=gen) for k, v in base.items()} for _ in range(3)]
    mixtures = np.random.default_rng(0).dirichlet(np.ones(3), size=proxies)
    screened, full, t_screen, t_full = [], [], [], []
    params = dict(model.named_parameters())
    for a in mixtures:
        with torch.no_grad():
            for k, b in base.items():
                if k in params:
                    params[k].copy_(b + sum(float(a[i]) * deltas[i][k] for i in range(3)))
        start = time.perf_counter()
        s = harness.evaluate(model, subsets)[0]
        t_screen.append(time.perf_counter() - start)
        start = time.perf_counter()
        f = harness.evaluate(model)[0]
        t_full.append(time.perf_counter() - start)
        screened.append(float(np.mean(list(s.values()))))
        full.append(float(np.mean(list(f.values()))))
    with torch.no_grad():
        for k, b in base.items():
            if k in params:
                params[k].copy_(b)
    keep = survivors(screened, keep=0.5)
    with_screening = sum(t_screen) + sum(t_full[i] for i in keep)
    best_full = int(np.argmax(full))
    return {
        "proxies": proxies, "fraction": fraction, "rho": float(spearmanr(screened, full).statistic),
        "time_ratio": with_screening / sum(t_full), "kept": keep, "best_full_kept": best_full in keep,
        "screened": screened, "full": full, "screen_items": {t: len(v) for t, v in subsets.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="pretrained model directory (default: a tiny random Llama)")
    parser.add_argument("--items", default="40,8,24", help="items of demix_math, demix_humaneval, each demix_heldout_mc task")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16, help="sequences (harness) / packed items (demix) per forward")
    parser.add_argument("--proxies", type=int, default=6, help="proxies in the screening round (0: skip)")
    parser.add_argument("--fraction", type=float, default=0.25, help="share of each task's items screened")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset of the shipped tasks")
    args = parser.parse_args()
    tasks = tuple(t for t in args.tasks.split(",") if t)
    n_math, n_code, n_mc = (int(x) for x in args.items.split(","))
    items = {"demix_math": n_math, "demix_humaneval": n_code, "demix_heldout_mc_general": n_mc, "demix_heldout_mc_code": n_mc}
    model, tokenizer, what = load_model(args.model)
    params = sum(p.numel() for p in model.parameters())
    load = os.getloadavg()[0]
    print(f"model: {what}, {params / 1e6:.1f}M parameters; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {load:.1f}, cpu, fp32")
    with tempfile.TemporaryDirectory() as tmp:
        task_dir = build_tasks(Path(tmp), tokenizer, max_answer_tokens=min(2048, model.config.max_position_embeddings))
        rows = compare_paths(model, tokenizer, task_dir, items, args.repeats, args.batch, tasks)
        header = (f"{'task':<26} {'items':>5} {'C':>3} {'harness tok/item':>16} {'demix tok/item':>14} {'tokens x':>8} "
                  f"{'harness s/item':>14} {'demix s/item':>12} {'time x':>7} {'max |dll|':>9} {'metrics':>8}")
        print(header)
        print("-" * len(header))
        for r in rows:
            n = r["items"]
            tk, tm = r["tokens"], r["times"]
            print(f"{r['task']:<26} {n:>5} {r['choices']:>3.0f} {tk['harness'] / n:>16.0f} {tk['demix'] / n:>14.0f} "
                  f"{tk['harness'] / tk['demix']:>7.2f}x {tm['harness'] / n:>14.4f} {tm['demix'] / n:>12.4f} "
                  f"{tm['harness'] / tm['demix']:>6.2f}x {r['ll_diff']:>9.1e} {'same' if r['same_metrics'] else 'DIFFER':>8}")
        tot = {k: sum(r["tokens"][k] for r in rows) for k in ("harness", "demix")}
        tt = {k: sum(r["times"][k] for r in rows) for k in ("harness", "demix")}
        print(f"{'all':<26} {'':>5} {'':>3} {'':>16} {'':>14} {tot['harness'] / tot['demix']:>7.2f}x "
              f"{'':>14} {'':>12} {tt['harness'] / tt['demix']:>6.2f}x")
        print("C: requests per item (choices). tokens x / time x: harness over demix (higher: demix cheaper). "
              "max |dll|: largest difference of a request's log-likelihood between the paths (nats); "
              f"largest relative: {max(r['ll_rel'] for r in rows):.1e}. self-check: {[r['check'] for r in rows]}")
        if args.proxies:
            s = screening_round(model, tokenizer, task_dir, items, args.proxies, args.fraction, args.batch, tasks)
            print(f"\nscreening: {s['proxies']} proxies, {s['fraction']:.0%} of each task's items {s['screen_items']}, "
                  f"full set for the best half {s['kept']}")
            print(f"  Spearman(screened, full objective) = {s['rho']:.3f} (target >= 0.95); round evaluation time with "
                  f"screening / without = {s['time_ratio']:.2f} (target <= 0.5); best full proxy kept: {s['best_full_kept']}")
            print("  screened objective: " + ", ".join(f"{v:.3f}" for v in s["screened"]))
            print("  full objective:     " + ", ".join(f"{v:.3f}" for v in s["full"]))
            if math.isnan(s["rho"]):
                print("  (Spearman undefined: constant scores)")


if __name__ == "__main__":
    sys.exit(main())
