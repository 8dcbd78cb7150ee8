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

With ``--run DIR`` (a finished demix run whose components are trained, e.g. the demo's), instead:

3. Screening over rounds of the run's real merged proxies: ``--run-proxies`` component weights
   sampled as round 0 samples them, each merged and scored by the search loop's own scorer
   (``MergedProxyScorer``) screened on each of ``--run-fractions`` of every lm_eval task's
   documents and in full (benchmarks: the demo's shipped multiple-choice tasks unless ``-s
   evaluation.benchmarks=...``); cut into rounds of ``--round-size``: Spearman of the screened
   against the full search objective, the round's evaluation time with screening over without
   (keep 0.5 and 0.25) and whether the round's best proxy went on to its full score.
4. Which scores the predictor should fit: over ``--fit-splits`` random splits into a round of
   ``--fit-pool`` proxies and a test set, the predictor fitted on the round's full scores, on as
   many full scores as screening's cost buys, on the survivors' full scores only (what the loop
   does), and on those plus the screened scores with a 0/1 feature saying which; each scored by
   the Spearman of its predicted objective against the test proxies' full objective.

Targets: >= 2.5x fewer forward tokens and >= 2x less wall time than the harness on 4-choice
tasks, identical scores; screening that halves a round's evaluation time with Spearman >= 0.95.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/eval_cost.py [--model models/smollm2-135m]
        [--items 40,8,24] [--repeats 1] [--proxies 6] [--fraction 0.25]
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/eval_cost.py --run runs/demo [--run-proxies 48]
        [--run-fractions 0.25,0.5] [--round-size 16] [--fit-pool 24] [--fit-splits 200]
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


#: The ``--run`` section's default benchmarks: the shipped multiple-choice tasks of the demo
#: domains (lm_eval only, so that a screen saves on every benchmark).
RUN_BENCHMARKS = (
    "evaluation.benchmarks=[{name: mc_general, evaluator: lm_eval, task: demix_heldout_mc_general, metric: acc}, "
    "{name: mc_math, evaluator: lm_eval, task: demix_heldout_mc_math, metric: acc}, "
    "{name: mc_math_problems, evaluator: lm_eval, task: demix_heldout_mc_math_problems, metric: acc}, "
    "{name: mc_code, evaluator: lm_eval, task: demix_heldout_mc_code, metric: acc}, "
    "{name: arith, evaluator: lm_eval, task: demix_math, metric: acc}]"
)


def run_proxies(run_dir: str, overrides: list[str], n: int, fractions: list[float], seed: int) -> dict:
    """``n`` sampled component weights of a finished run, each merged and scored by demix's own
    scorer (:class:`MergedProxyScorer`, what the search loop calls) screened on each of
    ``fractions`` of every lm_eval task's documents and in full; the seconds of each (the merge
    included, since the loop merges a survivor again for its full score)."""
    from demix.config import load_config
    from demix.evaluation.screening import screening_samples
    from demix.executors.scorers import MergedProxyScorer
    from demix.rundir import RunDir
    from demix.sampling import sample_mixtures

    run = RunDir(Path(run_dir))
    config = load_config(run.config, overrides)
    scorer = MergedProxyScorer(config, run, "cpu")
    scorer.setup()
    domains = list(config.data.domain_names)
    weights = sample_mixtures(domains, n, sampler=config.search.sampler, rng=seed)
    # Warm-up, untimed: the first screen and full score build each task's requests (once per run).
    first = dict(zip(domains, (float(x) for x in weights[0])))
    for fraction in fractions:
        scorer.screen(first, fraction)
    scorer(first)
    screened: dict[float, list[dict]] = {f: [] for f in fractions}
    t_screen: dict[float, list[float]] = {f: [] for f in fractions}
    full, t_full = [], []
    for i, w in enumerate(weights):
        mixture = dict(zip(domains, (float(x) for x in w)))
        for fraction in fractions:
            start = time.perf_counter()
            s = scorer.screen(mixture, fraction)
            t_screen[fraction].append(time.perf_counter() - start)
            screened[fraction].append(dict(s.capabilities))
        start = time.perf_counter()
        f = scorer(mixture)
        t_full.append(time.perf_counter() - start)
        full.append(dict(f.capabilities))
        print(f"  proxy {i + 1}/{len(weights)}: screened " + ", ".join(f"{t_screen[x][-1]:.1f}" for x in fractions)
              + f" s, full {t_full[-1]:.1f} s", flush=True)
    caps = list(full[0])
    return {
        "config": config, "domains": domains, "weights": weights, "capabilities": caps,
        "screen_docs": {x: {name: len(v) for name, v in screening_samples(scorer.evaluator.harness, x).items()}
                        for x in fractions},
        "screened": {x: np.array([[r[c] for c in caps] for r in screened[x]]) for x in fractions},
        "full": np.array([[r[c] for c in caps] for r in full]),
        "t_screen": {x: np.array(t_screen[x]) for x in fractions}, "t_full": np.array(t_full),
    }


def _objective(config, scores: np.ndarray, caps: list[str]) -> np.ndarray:
    """The search's objective of each row among these rows (``rank_mean``: ranks within them)."""
    from demix.objectives import objective_values

    s = config.search
    return objective_values(s.objective, scores, caps, s.capability_weights)


def screened_rounds(p: dict, size: int, keeps: tuple[float, ...]) -> list[dict]:
    """The proxies cut into rounds of ``size``: per round, Spearman of the screened against the
    full objective, and for each ``keep`` the round's evaluation time with screening over without
    and whether the round's best proxy by full score went on to its full score."""
    from scipy.stats import spearmanr

    from demix.evaluation.screening import survivors

    out = []
    for start in range(0, len(p["weights"]) - size + 1, size):
        idx = np.arange(start, start + size)
        s = _objective(p["config"], p["screened"][idx], p["capabilities"])
        f = _objective(p["config"], p["full"][idx], p["capabilities"])
        row = {"rho": float(spearmanr(s, f).statistic)}
        for keep in keeps:
            kept = survivors(s, keep=keep)
            cost = p["t_screen"][idx].sum() + p["t_full"][idx][kept].sum()
            row[keep] = {"time_ratio": float(cost / p["t_full"][idx].sum()), "best_kept": int(np.argmax(f)) in kept}
        out.append(row)
    return out


def screening_fit(p: dict, pool: int, keep: float, splits: int, kinds: tuple[str, ...]) -> dict:
    """What the predictor gains from screened scores: over ``splits`` random splits of the
    proxies into a searched round of ``pool`` and a test set (the rest), fit on

    - ``full``: every proxy of the round in full (no screening);
    - ``full, same cost``: a random subset of the round in full, as many as screening's cost buys;
    - ``survivors``: the round screened, the best ``keep`` by screened objective scored in full,
      fitted on those full scores only (what the search loop does);
    - ``survivors + screened``: the same evaluations, fitted on the full scores and the screened
      ones with a 0/1 feature saying which (predicted at 1: a full score);

    and score each fit on the test proxies' full scores: Spearman of the predicted against the
    full objective, and the test proxies ahead of the predicted best (0: it found the best)."""
    from scipy.stats import spearmanr

    from demix.evaluation.screening import survivors
    from demix.predictors import fit_predictors

    config, caps = p["config"], p["capabilities"]
    W, S, F = p["weights"], p["screened"], p["full"]
    n = len(W)
    rng = np.random.default_rng(0)
    cost_full = float(np.mean(p["t_full"]))
    results: dict[tuple[str, str], list[tuple[float, int]]] = {}
    costs: dict[str, list[float]] = {}

    def fit_and_score(kind: str, X: np.ndarray, Y: np.ndarray, test: np.ndarray, flag: bool) -> tuple[float, int]:
        pred = fit_predictors(X, {c: Y[:, j] for j, c in enumerate(caps)}, kind=kind)
        Xt = np.concatenate([W[test], np.ones((len(test), 1))], axis=1) if flag else W[test]
        P = pred.predict_matrix(Xt, caps)
        truth = _objective(config, F[test], caps)
        guess = _objective(config, P, caps)
        ahead = int((truth > truth[int(np.argmax(guess))]).sum())
        return float(spearmanr(guess, truth).statistic), ahead

    for _ in range(splits):
        order = rng.permutation(n)
        rnd, test = order[:pool], order[pool:]
        kept = rnd[survivors(_objective(config, S[rnd], caps), keep=keep)]
        spent = float(p["t_screen"][rnd].sum() + p["t_full"][kept].sum())
        same = rnd[: max(2, min(pool, round(spent / cost_full)))]
        plans = {
            "full": (W[rnd], F[rnd], False, float(p["t_full"][rnd].sum())),
            "full, same cost": (W[same], F[same], False, float(p["t_full"][same].sum())),
            "survivors": (W[kept], F[kept], False, spent),
            "survivors + screened": (
                np.concatenate([np.concatenate([W[kept], np.ones((len(kept), 1))], axis=1),
                                np.concatenate([W[rnd], np.zeros((pool, 1))], axis=1)]),
                np.concatenate([F[kept], S[rnd]]), True, spent),
        }
        for name, (X, Y, flag, cost) in plans.items():
            costs.setdefault(name, []).append(cost / float(p["t_full"][rnd].sum()))
            for kind in kinds:
                results.setdefault((name, kind), []).append(fit_and_score(kind, X, Y, test, flag))
    return {"results": results, "costs": costs, "pool": pool, "test": n - pool, "splits": splits}


def print_run_section(args) -> None:
    """Sections 3 and 4 (``--run``): screening over rounds of a finished run's merged proxies,
    and what the predictor gains from the screened scores, at each screened fraction."""
    overrides = [RUN_BENCHMARKS] if not any(o.startswith("evaluation.benchmarks=") for o in args.set) else []
    overrides += ["evaluation.device=cpu", *args.set]
    fractions = [float(x) for x in args.run_fractions.split(",") if x]
    print(f"\nmerged proxies of the run in {args.run}: {args.run_proxies} sampled component weights, "
          f"screened on {', '.join(f'{x:.0%}' for x in fractions)} and scored in full", flush=True)
    runs = run_proxies(args.run, overrides, args.run_proxies, fractions, args.seed)
    print(f"capabilities: {runs['capabilities']}; objective {runs['config'].search.objective}; "
          f"seconds per proxy in full: {np.mean(runs['t_full']):.2f}")
    keeps = (0.5, 0.25)
    kinds = tuple(k for k in args.fit_kinds.split(",") if k)
    for fraction in fractions:
        p = {**runs, "screened": runs["screened"][fraction], "t_screen": runs["t_screen"][fraction]}
        print(f"\n## screened on {fraction:.0%}: documents per task {runs['screen_docs'][fraction]}; seconds per "
              f"proxy {np.mean(p['t_screen']):.2f} ({np.mean(p['t_screen']) / np.mean(p['t_full']):.2f} of a full score)")
        rounds = screened_rounds(p, args.round_size, keeps)
        print(f"per round of {args.round_size} proxies ({len(rounds)} rounds):")
        print("| round | Spearman(screened, full) | " + " | ".join(f"time ratio keep {k:g} | best kept {k:g}" for k in keeps)
              + " |")
        print("|---|---|" + "---|---|" * len(keeps))
        for i, r in enumerate(rounds):
            print(f"| {i} | {r['rho']:.3f} | " + " | ".join(
                f"{r[k]['time_ratio']:.2f} | {'yes' if r[k]['best_kept'] else 'no'}" for k in keeps) + " |")
        print(f"| mean | {np.mean([r['rho'] for r in rounds]):.3f} | " + " | ".join(
            f"{np.mean([r[k]['time_ratio'] for r in rounds]):.2f} | {sum(r[k]['best_kept'] for r in rounds)}/{len(rounds)}"
            for k in keeps) + " |")
        print("(targets: Spearman >= 0.95, time ratio <= 0.5)")
        fit = screening_fit(p, args.fit_pool, 0.5, args.fit_splits, kinds)
        print(f"predictor fitted on a round of {fit['pool']} proxies (screening keep 0.5), scored on the other "
              f"{fit['test']} proxies' full scores, {fit['splits']} random splits (mean [2.5%, 97.5%] over splits):")
        print("| fitted on | cost / full round | kind | Spearman(predicted, full objective) | test proxies ahead of the pick |")
        print("|---|---|---|---|---|")
        for (name, kind), vals in fit["results"].items():
            rho = np.array([v[0] for v in vals])
            ahead = np.array([v[1] for v in vals])
            lo, hi = np.nanpercentile(rho, [2.5, 97.5])
            print(f"| {name} | {np.mean(fit['costs'][name]):.2f} | {kind} | {np.nanmean(rho):.3f} [{lo:.2f}, {hi:.2f}] | "
                  f"{ahead.mean():.2f} |")
        for kind in kinds:
            a = np.array([v[0] for v in fit["results"][("survivors + screened", kind)]])
            b = np.array([v[0] for v in fit["results"][("survivors", kind)]])
            d = a - b
            print(f"{kind}: survivors + screened - survivors: mean {np.nanmean(d):+.3f}, ahead in "
                  f"{np.mean(d > 0):.0%} of splits, behind in {np.mean(d < 0):.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="pretrained model directory (default: a tiny random Llama)")
    parser.add_argument("--items", default="40,8,24", help="items of demix_math, demix_humaneval, each demix_heldout_mc task")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16, help="sequences (harness) / packed items (demix) per forward")
    parser.add_argument("--proxies", type=int, default=6, help="proxies in the screening round (0: skip)")
    parser.add_argument("--fraction", type=float, default=0.25, help="share of each task's items screened")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset of the shipped tasks")
    parser.add_argument("--run", default=None, help="a finished demix run (components trained): sections 3-4 on "
                        "its merged proxies, and nothing else")
    parser.add_argument("--run-proxies", type=int, default=48, help="sampled component weights scored (--run)")
    parser.add_argument("--run-fractions", default="0.25,0.5", help="screened shares of each task's documents (--run)")
    parser.add_argument("--round-size", type=int, default=16, help="proxies per screened round (--run)")
    parser.add_argument("--fit-pool", type=int, default=24, help="proxies of the round the predictor fits on (--run)")
    parser.add_argument("--fit-splits", type=int, default=200, help="random round/test splits (--run)")
    parser.add_argument("--fit-kinds", default="ridge,auto", help="predictor kinds compared (--run)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampled component weights (--run)")
    parser.add_argument("-s", "--set", action="append", default=[], help="config override for --run (repeatable); "
                        "default benchmarks: the demo's shipped multiple-choice tasks")
    args = parser.parse_args()
    if args.run:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}, cpu, fp32")
        print_run_section(args)
        return
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
