"""Search efficiency: the regret of each search strategy against a dense ground truth of merged
proxies, at equal numbers of proxy evaluations (issue 18).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/search_efficiency.py \
        [--landscapes tiny embedded] [--budgets 10 20 35 70 140] [--seeds 0 1 2] \
        [--strategies paper paper+refine ucb ucb+refine] [--dense 400] [--work-dir DIR]

Two landscapes, both real merged proxies scored by held-out loss on CPU, objective ``weighted``
(the one a proxy's measured scores give directly: ``rank_mean`` ranks within a pool):

- ``tiny``: the tiny run (tests/tiny_run.py: three synthetic domains, a random base, components
  = base + random deltas of ``--delta-scale``), equal capability weights. Its optimum lies on a
  face of the simplex (the math component only hurts).
- ``embedded``: the embedded corpora ``builtin:general``, ``builtin:math``, ``builtin:code``
  (docs/data.md), prepared and trained by demix itself (a 64-wide, 2-layer Llama base on 60k
  general tokens, components on 30k tokens of the 50% general recipe): a second domain set.
  Its capabilities differ in range by 10x, so the capability weights are each capability's
  inverse range over the three one-component proxies (normalised to sum 1: every capability
  counts alike, a user's usual scaling); the scores are concave in the component weights, and
  with these weights the optimum is interior. Interiority is checked, not assumed: the best
  mixture's smallest component weight is printed, with why the ascent stopped there.

1. *Dense ground truth* (cached in ``--work-dir``, reused by reruns): ``--dense`` mixtures
   sampled from the search's own space (seed 12345) plus the vertices, each merged and
   evaluated; then projected gradient ascent (:func:`demix.search.refine.refine`, exact
   gradients through the merge, :func:`demix.evaluation.gradient.score_gradients`) from the
   ``--starts`` best distinct dense mixtures. The reference is the best measured objective of
   all of them: the best mixture the proxies can show.
2. *Strategies*, for every budget B and seed, each a fresh search (rounds ``[4B/7, 2B/7, B/7]``,
   the paper's N, N/2, N/4; pool 4000, top-k 50, 2 CV folds):
   ``paper`` (top-region rounds), ``ucb`` (``search.planner: ucb``, an ensemble of 6, beta 1),
   and each ``+refine``: the same search (its rounds read back, not fitted again) followed by
   ``search.refine`` with at most ``--refine-steps`` proposals; the table's evaluations say
   ``B + proposals`` and its gradients are reported apart, with their cost in evaluations'
   time. The chosen mixture is merged and evaluated once for the table (not counted, the same
   for every strategy; refinement measures its start anyway).
3. *Regret* = reference - measured objective of the chosen mixture; *rank* = 1 + the dense
   mixtures measured better than it; *pred - meas* = the chosen mixture's predicted objective
   minus its measured one (the predictor overfitting the proxies shows as a positive gap).

Evaluations are cached by mixture key in memory (a strategy's round 0 equals another's of the
same seed and size). Prints, per landscape, a markdown table (mean and per-seed regret and rank)
and whether each target of the issue is met; nothing is asserted (one machine, tiny models).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tiny run's builder (tests/tiny_run.py)

STRATEGIES = ("paper", "paper+refine", "ucb", "ucb+refine")
EMBEDDED_DOMAINS = ("general", "math", "code")
#: Version of the cached dense truth's layout and of what it is computed from.
TRUTH_VERSION = 2


def rounds_for(budget: int) -> list[int]:
    """The paper's N, N/2, N/4 schedule summing to ``budget`` (each round at least 1)."""
    sizes = [max(1, round(budget * f)) for f in (4 / 7, 2 / 7)]
    return [*sizes, max(1, budget - sum(sizes))]


class CachedScorer:
    """The run's merged-proxy scorer with a cache by mixture key (identical proxies, same scores)."""

    def __init__(self, scorer: Any) -> None:
        self.scorer, self.cache, self.calls, self.seconds = scorer, {}, 0, 0.0

    def __call__(self, mixture: dict[str, float]) -> Any:
        from demix.mixtures import mixture_key

        key = mixture_key(mixture)
        if key not in self.cache:
            t = time.perf_counter()
            self.calls += 1
            self.cache[key] = self.scorer(mixture)
            self.seconds += time.perf_counter() - t
        return self.cache[key]


# --------------------------------------------------------------------------- landscapes


def build_tiny(root: Path, delta_scale: float) -> tuple[Any, Any, dict[str, float]]:
    """The tiny run (random deltas); equal capability weights."""
    from demix.config import config_from_dict
    from demix.rundir import RunDir
    from tiny_run import build_tiny_run

    done = root / "built.json"
    if done.is_file() and json.loads(done.read_text()).get("delta_scale") == delta_scale:
        return config_from_dict(json.loads((root / "config.json").read_text())), RunDir(root), {}
    config, run = build_tiny_run(root, delta_scale=delta_scale)
    (root / "config.json").write_text(json.dumps(config.model_dump(mode="json")))
    done.write_text(json.dumps({"delta_scale": delta_scale}))
    return config, run, {}


def build_embedded(root: Path) -> tuple[Any, Any, dict[str, float]]:
    """The embedded corpora, prepared and trained by demix (about 40 s on a quiet machine, once)."""
    from demix.config import config_from_dict
    from demix.rundir import RunDir

    config = config_from_dict({
        "output_dir": str(root),
        "data": {"domains": [{"name": d, "source": f"builtin:{d}", "max_tokens": 120_000} for d in EMBEDDED_DOMAINS],
                 "heldout_fraction": 0.05, "max_heldout_documents": 40},
        "tokenizer": {"vocab_size": 1024, "max_train_bytes": 600_000},
        "model": {"seq_len": 64, "hidden_size": 64, "num_layers": 2, "num_heads": 2},
        "train": {"base": {"tokens": 60_000, "lr": 0.003, "batch_size": 8, "warmup_fraction": 0.05},
                  "components": {"tokens": 30_000, "lr": 0.003, "batch_size": 8, "general_share": 0.5},
                  "device": "cpu"},
        "evaluation": {"heldout_tokens": 2048, "batch_size": 8, "device": "cpu"},
    })
    run = RunDir(root)
    from demix.prepare import prepare
    from demix.training import train_base, train_components

    prepare(config, run, progress=False)  # each step skips what is already done
    train_base(config, run, show_progress=False)
    train_components(config, run, show_progress=False)
    return config, run, {}


def vertex_weights(scorer: CachedScorer, domains: list[str]) -> dict[str, float]:
    """Capability weights = 1 / range of each capability over the one-component proxies."""
    caps = []
    for i in range(len(domains)):
        r = scorer({d: float(i == j) for j, d in enumerate(domains)})
        caps.append(r.capabilities)
    names = list(caps[0])
    spans = np.array([max(c[n] for c in caps) - min(c[n] for c in caps) for n in names])
    w = (1.0 / spans) / (1.0 / spans).sum()
    return {n: round(float(x), 6) for n, x in zip(names, w)}


# --------------------------------------------------------------------------- the dense truth


def dense_truth(
    config: Any, run: Any, scorer: CachedScorer, weights: dict[str, float], n: int, starts: int, steps: int,
    cache: Path, tag: dict[str, Any],
) -> dict[str, Any]:
    """Dense merged proxies and gradient ascent from the best ``starts`` of them (cached on disk)."""
    from demix.evaluation.gradient import score_gradients
    from demix.mixtures import prior_weights
    from demix.objectives import capability_weights
    from demix.rundir import read_token_counts
    from demix.sampling import resolve_bounds, sample_mixtures
    from demix.search.loop import expected_capabilities
    from demix.search.refine import objective_of, refine

    key = {"version": TRUTH_VERSION, "dense": n, "starts": starts, "ascent_steps": steps, "weights": weights, **tag}
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("key") == key:
            return saved
    domains = config.data.domain_names
    tokens = read_token_counts(run, domains)
    bounds = resolve_bounds(domains, config.search.bounds, tokens)
    prior = prior_weights(domains, config.search.sampler.prior, tokens)
    dense = sample_mixtures(domains, n, prior, config.search.sampler, bounds, np.random.default_rng(12345))
    dense = np.vstack([np.eye(len(domains)), dense])
    caps = expected_capabilities(config)
    cw = dict(zip(caps, map(float, capability_weights(caps, weights))))

    def measure(a: np.ndarray) -> float:
        return objective_of(scorer(dict(zip(domains, map(float, a)))).capabilities, cw)

    t0 = time.perf_counter()
    values = np.array([measure(w) for w in dense])
    dense_s = time.perf_counter() - t0
    scorer.scorer.setup()
    builder, evaluator = scorer.scorer.builder, scorer.scorer.evaluator

    def gradient(a: np.ndarray) -> np.ndarray:
        g = score_gradients(builder, evaluator, dict(zip(domains, map(float, a))))
        return sum((w * np.asarray(g.capabilities[c]) for c, w in cw.items() if w > 0), np.zeros(len(domains)))

    ascents = []
    picked: list[np.ndarray] = []
    t1 = time.perf_counter()
    for i in np.argsort(-values):
        if len(picked) == starts:
            break
        if any(np.linalg.norm(dense[i] - p) < 0.1 for p in picked):  # distinct starts
            continue
        picked.append(dense[i])
        res = refine(dense[i], gradient, measure, bounds, steps=steps, step_size=0.05, min_step=1e-4)
        ascents.append({"start": dense[i].tolist(), "start_objective": res.start_objective, "end": res.best.tolist(),
                        "objective": res.best_objective, "proposals": len(res.steps), "gradients": res.gradients,
                        "stopped": res.stopped})
    ascent_s = time.perf_counter() - t1
    best = max(ascents, key=lambda a: a["objective"])
    out = {
        "key": key, "domains": domains, "capability_weights": cw, "dense": dense.tolist(), "values": values.tolist(),
        "ascents": ascents, "best": max(best["objective"], float(values.max())),
        "best_mixture": best["end"] if best["objective"] >= values.max() else dense[int(values.argmax())].tolist(),
        "dense_seconds": dense_s, "ascent_seconds": ascent_s,
    }
    cache.write_text(json.dumps(out, indent=1))
    return out


# --------------------------------------------------------------------------- the strategies


def link_run(src: Any, out: Path) -> None:
    """A search directory sharing the landscape's data, tokenizer and checkpoints (symlinks), so
    the search's refinement builds its own merged proxies and gradients from them."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("data", "tokenizer", "models"):
        if not (out / name).exists():
            (out / name).symlink_to(Path(src.root).resolve() / name)


def run_strategy(
    raw: dict[str, Any], run: Any, scorer: CachedScorer, tokens: Any, strategy: str, budget: int, seed: int,
    refine_steps: int, weights: dict[str, float], work: Path,
) -> dict[str, Any]:
    """One search; returns the chosen mixture's measured and predicted objective."""
    from demix.config import config_from_dict
    from demix.rundir import RunDir
    from demix.search import run_search

    refined = strategy.endswith("+refine")
    search = {**raw["search"], "rounds": rounds_for(budget), "pool_size": 4000, "top_k": 50, "objective": "weighted",
              "capability_weights": weights, "seed": seed, "cv_folds": 2}
    if strategy.startswith("ucb"):
        search |= {"planner": "ucb", "predictor_intervals": 6, "ucb_beta": 1.0}
    if refined:
        search["refine"] = {"enabled": True, "steps": refine_steps, "step_size": 0.05, "min_step": 0.002}
    # A refined search resumes its base strategy's search (refine is outside the rounds'
    # fingerprint: the finished rounds are read back, not fitted again), then refines.
    out = work / f"{strategy.removesuffix('+refine')}_{budget}_{seed}"
    link_run(run, out)
    cfg = config_from_dict({**raw, "output_dir": str(out), "search": search})
    before = scorer.calls
    result = run_search(cfg, RunDir(out), scorer, tokens)
    best = result.best
    proposals = len((best.refinement or {}).get("steps", []))
    assert result.evaluations == budget, (result.evaluations, budget)
    from demix.objectives import capability_weights
    from demix.search.refine import objective_of

    caps = list(best.predicted.capabilities) if best.predicted else []
    cw = dict(zip(caps, map(float, capability_weights(caps, weights))))
    measured = objective_of(scorer(result.component_weights).capabilities, cw)
    predicted = objective_of({c: p.value for c, p in best.predicted.capabilities.items()}, cw) if best.predicted else None
    return {"measured": measured, "predicted": predicted, "evaluations": result.evaluations, "proposals": proposals,
            "gradients": (best.refinement or {}).get("gradients", 0), "new": scorer.calls - before,
            "weights": result.component_weights}


# --------------------------------------------------------------------------- the table


def landscape_table(name: str, truth: dict[str, Any], rows: dict[tuple[str, int], list[dict[str, Any]]],
                    grad_cost: float | None) -> list[str]:
    dense = np.array(truth["values"])
    best = truth["best"]
    lines = [f"### {name}", "",
             "| strategy | evaluations | mean regret | regret per seed | mean rank | rank per seed | pred - meas | gradients |",
             "|---|---|---|---|---|---|---|---|"]
    means: dict[tuple[str, int], float] = {}
    for (strategy, budget), results in sorted(rows.items(), key=lambda kv: (STRATEGIES.index(kv[0][0]), kv[0][1])):
        regrets = [best - r["measured"] for r in results]
        ranks = [1 + int((dense > r["measured"]).sum()) for r in results]
        gaps = [r["predicted"] - r["measured"] for r in results if r["predicted"] is not None]
        means[(strategy, budget)] = float(np.mean(regrets))
        grads = sum(r["gradients"] for r in results) / len(results)
        extra = max(r["proposals"] for r in results)
        evals = f"{budget} + {extra}" if strategy.endswith("+refine") else str(budget)
        lines.append(f"| {strategy} | {evals} | {np.mean(regrets):.5f} | {', '.join(f'{x:.5f}' for x in regrets)} | "
                     f"{np.mean(ranks):.1f} | {', '.join(map(str, ranks))} | {np.mean(gaps):+.5f} | {grads:.1f} |")
    lines.append("")
    lines += targets(means, grad_cost)
    return lines


def targets(means: dict[tuple[str, int], float], grad_cost: float | None) -> list[str]:
    """The issue's two targets, met or not, with the numbers behind them."""
    out = []
    ref = means.get(("paper", 140))
    if ref is None:
        out.append("- target 1 (the paper's regret at 140 with <= 35 evaluations): not measured (no paper at 140)")
    else:
        hits = sorted((b, s) for (s, b), v in means.items() if b <= 35 and v <= ref)
        first = f"{hits[0][1]} at {hits[0][0]}" if hits else None
        out.append(f"- target 1 (reach paper@140's mean regret {ref:.5f} with <= 35 evaluations): "
                   + (f"MET ({', '.join(f'{s}@{b}' for b, s in hits)}; first: {first})" if hits else "MISSED"))
    p35, r35 = means.get(("paper", 35)), means.get(("paper+refine", 35))
    if p35 is None or r35 is None:
        out.append("- target 2 (refinement halves paper@35's regret): not measured")
    elif p35 <= 0:
        out.append(f"- target 2 (refinement halves paper@35's regret): paper@35's mean regret is {p35:.5f} <= 0 "
                   f"(the dense truth does not bound it): nothing to halve; paper+refine@35: {r35:.5f}")
    else:
        ok = r35 <= p35 / 2
        out.append(f"- target 2 (refinement halves paper@35's regret {p35:.5f}): paper+refine@35 (+ its proposals) {r35:.5f} "
                   f"({r35 / p35:.2f} of it): {'MET' if ok else 'MISSED'}")
    if grad_cost is not None:
        out.append(f"- one gradient costs {grad_cost:.1f} evaluations' time on this landscape (not counted in B)")
    return out


def gradient_cost(scorer: CachedScorer, domains: list[str]) -> float:
    """Seconds of one gradient over seconds of one evaluation, at the centre (measured now)."""
    from demix.evaluation.gradient import score_gradients

    scorer.scorer.setup()
    m = {d: 1.0 / len(domains) for d in domains}
    t = time.perf_counter()
    for _ in range(3):
        scorer.scorer(m)
    ev = (time.perf_counter() - t) / 3
    t = time.perf_counter()
    for _ in range(3):
        score_gradients(scorer.scorer.builder, scorer.scorer.evaluator, m)
    return (time.perf_counter() - t) / 3 / ev


def describe_truth(name: str, truth: dict[str, Any]) -> list[str]:
    dense = np.array(truth["values"])
    best_w = np.array(truth["best_mixture"])
    a = max(truth["ascents"], key=lambda x: x["objective"])
    gain = truth["best"] - float(dense.max())
    return [
        f"{name}: {len(dense)} dense merged proxies ({truth['dense_seconds']:.0f} s), objective {dense.min():.5f} .. "
        f"{dense.max():.5f} (median {np.median(dense):.5f}); ascent from {len(truth['ascents'])} starts "
        f"({truth['ascent_seconds']:.0f} s) adds {gain:.5f}: reference {truth['best']:.5f}",
        f"  best mixture (component weights) {dict(zip(truth['domains'], np.round(best_w, 3).tolist()))}, smallest weight "
        f"{best_w.min():.3f} ({'interior' if best_w.min() >= 0.02 else 'on a face of the simplex'}); its ascent stopped: "
        f"{a['stopped']}",
        f"  capability weights {truth['capability_weights']}",
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--landscapes", nargs="+", default=["tiny", "embedded"], choices=["tiny", "embedded"])
    ap.add_argument("--dense", type=int, default=400)
    ap.add_argument("--starts", type=int, default=5, help="gradient-ascent starts of the dense truth")
    ap.add_argument("--ascent-steps", type=int, default=60, help="most proposals of each ascent of the dense truth")
    ap.add_argument("--budgets", type=int, nargs="+", default=[10, 20, 35, 70, 140])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    ap.add_argument("--refine-steps", type=int, default=4)
    ap.add_argument("--plan", nargs="+", default=None, metavar="STRATEGY:BUDGET:SEEDS",
                    help="run only these, in this order (e.g. paper:140:0 ucb:35:0,1,2); default: every strategy x "
                         "budget x seed")
    ap.add_argument("--delta-scale", type=float, default=0.3,
                    help="tiny landscape: size of the components' random deltas (tests/tiny_run.py)")
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/demix_search_efficiency"),
                    help="landscapes and dense truths are built here once and reused")
    args = ap.parse_args()
    logging.getLogger("demix").setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from demix.executors import ProxyScorerFactory
    from demix.rundir import read_token_counts

    t_all = time.perf_counter()
    report: list[str] = []
    for name in args.landscapes:
        t0 = time.perf_counter()
        root = args.work_dir / name / "run"
        root.parent.mkdir(parents=True, exist_ok=True)
        config, run, _ = build_tiny(root, args.delta_scale) if name == "tiny" else build_embedded(root)
        domains = config.data.domain_names
        scorer = CachedScorer(ProxyScorerFactory.from_run(config, run, "cpu")())
        weights = {} if name == "tiny" else vertex_weights(scorer, domains)
        tag = {"landscape": name, **({"delta_scale": args.delta_scale} if name == "tiny" else {})}
        truth = dense_truth(config, run, scorer, weights, args.dense, args.starts, args.ascent_steps,
                           args.work_dir / name / "truth.json", tag)
        built = time.perf_counter() - t0
        cost = gradient_cost(scorer, domains)
        tokens = read_token_counts(run, domains)
        raw = config.model_dump(mode="json")
        rows: dict[tuple[str, int], list[dict[str, Any]]] = {}
        searches = args.work_dir / name / "searches"
        t1 = time.perf_counter()
        plan = [(st, b, sd) for st in args.strategies for b in args.budgets for sd in args.seeds]
        if args.plan:
            plan = [(st, int(b), int(sd)) for item in args.plan for st, b, seeds in [item.split(":")]
                    for sd in seeds.split(",")]
        for strategy, budget, seed in plan:
            r = run_strategy(raw, run, scorer, tokens, strategy, budget, seed, args.refine_steps, weights, searches)
            rows.setdefault((strategy, budget), []).append(r)
            print(f"{name} {strategy} B={budget} seed={seed}: regret {truth['best'] - r['measured']:.5f} "
                  f"({time.perf_counter() - t1:.0f} s)", flush=True)
            # The table so far, after every search (a run stopped early still leaves one).
            (args.work_dir / name / "table.md").write_text("\n".join(landscape_table(name, truth, rows, None)) + "\n")
        lines = describe_truth(name, truth)
        lines.append(f"  landscape + truth {built:.0f} s (cached after the first run); searches "
                     f"{time.perf_counter() - t1:.0f} s, {scorer.calls} merged proxies evaluated in this process")
        report += ["", *lines, "", *landscape_table(name, truth, rows, cost)]
        print("\n".join(report[-(len(rows) + 12):]), flush=True)
    print("\n\n## summary\n" + "\n".join(report))
    print(f"\nwall time {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
