"""Evidence reuse when a domain is added (issue 19): how good is the predictor made of a finished
3-domain search's evaluations plus k new proxies, against a full recompute with N new proxies?

On the embedded demo (the `demo` preset, overrides printed; prepare, base and the components
resumed from ``--out``): the search's 3 domains are general, math, code; the 4th, added after
it, is math_problems. Every proxy is a real merged model scored on the default benchmarks (the
held-out bits per byte of every domain, one capability each).

- **old evidence**: ``--old`` mixtures over the 3 domains (the search's sampler and bounds), scored
  as that search scored them: on the 3 domains' held-out text only (no ``heldout:math_problems``).
  As 4-domain proxies they are exact: weight 0 on math_problems is the same merged model.
- **(a) full recompute**: ``--full`` mixtures sampled over the 4 domains, every benchmark scored.
- **(b) reuse + k**: the old evidence plus the first k of the cover points the search plans for
  the new dimension (:func:`demix.search.planning.cover_points`), scored on every benchmark; the
  predictors are fitted as the search fits them (:func:`demix.search.fitting.fit_all`: each
  benchmark and capability on the rows that have it, so ``math_problems`` on the k new rows).
- **(c) k only**: the same k new proxies without the old evidence (what reuse adds).

Yardstick: Spearman rho of each capability's predictor on a common held-out set of ``--test``
4-domain proxies (sampled over the 4 domains, as the full recompute's), macro-averaged, and its
k-fold CV rho; the ratio to the full recompute, and the new proxy evaluations as a share of N.
Scores are cached in ``<out>/evidence_reuse_scores.json`` (a re-run evaluates nothing again).

The tokenizer is the 4-domain run's (a real added domain keeps the 3-domain one; the components
of general, math and code are the same either way: each is trained on its domain and general).

usage: OMP_NUM_THREADS=1 python benchmarks/evidence_reuse.py [--out runs/evidence_reuse]
           [--old 32] [--full 32] [--k 4,8,12] [--test 24] [-s key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

OLD_DOMAINS = ["general", "math", "code"]
NEW_DOMAIN = "math_problems"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/evidence_reuse", help="run directory (resumed when it exists)")
    ap.add_argument("--old", type=int, default=32, help="evaluations of the finished 3-domain search")
    ap.add_argument("--full", type=int, default=32, help="N: 4-domain proxies of the full recompute")
    ap.add_argument("--k", default="4,8,12", help="new proxies added to the reused evidence, comma-separated")
    ap.add_argument("--test", type=int, default=24, help="common held-out 4-domain proxies")
    ap.add_argument("--seeds", type=int, default=3, help="independent draws of every set (table: mean and sd)")
    ap.add_argument("-s", "--set", dest="overrides", action="append", default=[], help="extra config override")
    args = ap.parse_args()
    ks = sorted(int(k) for k in args.k.split(","))

    import numpy as np

    from demix.config import config_from_dict, save_config
    from demix.configs import load_preset
    from demix.evaluation import Evaluator
    from demix.merging import ProxyBuilder
    from demix.mixtures import mixture_key
    from demix.prepare import prepare
    from demix.rundir import RunDir, read_token_counts
    from demix.sampling import sample_mixtures
    from demix.search.loop import _sampling_space
    from demix.search.planning import Planner, cover_points
    from demix.training import train_base, train_components
    from demix.training.roles import mixture_map

    overrides = [f"output_dir={args.out}", "train.device=cpu", "evaluation.device=cpu", "evaluation.heldout_tokens=4096",
                 *args.overrides]
    config = load_preset("demo", overrides)
    run = RunDir(config.run_dir)
    run.root.mkdir(parents=True, exist_ok=True)
    save_config(config, run.config)
    print("preset: demo, overrides:", " ".join(overrides), flush=True)
    domains = config.data.domain_names
    assert set(domains) == {*OLD_DOMAINS, NEW_DOMAIN}, domains
    domains = [*OLD_DOMAINS, NEW_DOMAIN]  # the column order of every table below
    t0 = time.perf_counter()
    prepare(config, run, progress=False)
    train_base(config, run, show_progress=False)
    train_components(config, run, show_progress=False)
    print(f"[prepare, base, components: {time.perf_counter() - t0:.0f} s]", flush=True)

    tokens = read_token_counts(run, config.data.domain_names)
    data3 = config.model_dump(mode="json")
    data3["data"]["domains"] = [d for d in data3["data"]["domains"] if d["name"] in OLD_DOMAINS]
    config3 = config_from_dict(data3)
    bounds3, prior3 = _sampling_space(config3, {d: tokens[d] for d in config3.data.domain_names},
                                      mixture_map(config3, run))
    bounds4, prior4 = _sampling_space(config, tokens, mixture_map(config, run))
    s = config.search
    names = config.data.domain_names
    planner = Planner(config, bounds4, prior4)
    draws = []
    for seed in range(args.seeds):
        rng = [np.random.default_rng(10 * seed + i) for i in (1, 2, 3, 4)]
        old3 = sample_mixtures(config3.data.domain_names, args.old, prior3, s.sampler, bounds3, rng[0])
        old = [{d: float(x) for d, x in zip(config3.data.domain_names, row)} | {NEW_DOMAIN: 0.0} for row in old3]
        full = _rows(names, sample_mixtures(names, args.full, prior4, s.sampler, bounds4, rng[1]))
        test = _rows(names, sample_mixtures(names, args.test, prior4, s.sampler, bounds4, rng[2]))
        evidence = np.array([[m[d] for d in names] for m in old])
        new = _rows(names, cover_points(names, ks[-1], evidence, planner, rng[3]))
        draws.append((old, full, new, test))

    cache_file = run.root / "evidence_reuse_scores.json"
    cache: dict[str, dict] = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    builder = evaluator = None
    todo = list({mixture_key(m): m for d in draws for m in [*d[0], *d[1], *d[2], *d[3]]
                 if mixture_key(m) not in cache}.values())
    print(f"proxies per seed: {args.old} old, {args.full} full, {ks[-1]} new, {args.test} test; {args.seeds} seed(s); "
          f"{len(todo)} to evaluate", flush=True)
    t0 = time.perf_counter()
    for i, m in enumerate(todo):
        if builder is None:
            builder = ProxyBuilder.from_run(config, run, "cpu")
            evaluator = Evaluator.from_run(config, run, "cpu")
        builder.build(m)
        r = evaluator.evaluate(builder.model)
        cache[mixture_key(m)] = {"benchmarks": dict(r.benchmarks), "capabilities": dict(r.capabilities),
                                 "higher_is_better": dict(r.higher_is_better)}
        cache_file.write_text(json.dumps(cache))  # every evaluation kept: a kill loses nothing
        if (i + 1) % 10 == 0 or i + 1 == len(todo):
            print(f"  {i + 1}/{len(todo)} evaluated ({(time.perf_counter() - t0) / (i + 1):.1f} s each)", flush=True)

    report(config, cache, draws, ks)


def _rows(domains, W):
    return [{d: float(x) for d, x in zip(domains, row)} for row in W]


def _evaluation(i, m, scores, drop=None):
    from demix.mixtures import mixture_key
    from demix.store import Evaluation

    bench = {b: v for b, v in scores["benchmarks"].items() if b != drop}
    caps = {c: v for c, v in scores["capabilities"].items() if drop is None or c != drop.split(":", 1)[1]}
    hib = {b: v for b, v in scores["higher_is_better"].items() if b in bench}
    return Evaluation(i, mixture_key(m), "merged", 0, dict(m), bench, caps, {"higher_is_better": hib}, "", "")


def report(config, cache, draws, ks) -> None:
    import numpy as np
    from scipy.stats import spearmanr

    from demix.mixtures import mixture_key
    from demix.search.fitting import fit_all, resolve_directions

    s = config.search
    names = config.data.domain_names

    def score(rows, W_test, truth, kind):
        fit = fit_all(rows, names, resolve_directions(rows, config), kind, s.cv_folds, s.seed)
        pred = fit.capabilities.predict(W_test)
        held = {c: float(spearmanr(truth[c], pred[c]).statistic) for c in truth}
        cvs = [fit.cv.capabilities[c].spearman for c in truth]
        cv = float(np.mean([v for v in cvs if v is not None])) if any(v is not None for v in cvs) else float("nan")
        return held, cv, fit.capabilities.kind

    results: dict[tuple[str, int, int], list] = {}
    for old, full, new, test in draws:
        caps = sorted(cache[mixture_key(test[0])]["capabilities"])
        W_test = np.array([[m[d] for d in names] for m in test])
        truth = {c: np.array([cache[mixture_key(m)]["capabilities"][c] for m in test]) for c in caps}
        # The old search scored no held-out math_problems: its rows carry 3 benchmarks and capabilities.
        old_rows = [_evaluation(i, m, cache[mixture_key(m)], drop=f"heldout:{NEW_DOMAIN}") for i, m in enumerate(old)]
        full_rows = [_evaluation(1000 + i, m, cache[mixture_key(m)]) for i, m in enumerate(full)]
        for kind in (s.predictor, "ridge"):
            results.setdefault((f"(a) full recompute, {kind}", len(full), 0), []).append(
                score(full_rows, W_test, truth, kind))
        for k in ks:
            fresh = [_evaluation(2000 + i, m, cache[mixture_key(m)]) for i, m in enumerate(new[:k])]
            results.setdefault((f"(b) reuse + {k} new", k, len(old)), []).append(
                score(old_rows + fresh, W_test, truth, s.predictor))
            results.setdefault((f"(c) {k} new only", k, 0), []).append(score(fresh, W_test, truth, s.predictor))

    n_full = len(draws[0][1])
    ref_key = next(iter(results))
    ref_ridge = list(results)[1]

    def macro(runs):
        return np.array([np.mean(list(h.values())) for h, _, _ in runs])

    ref, ref_r = macro(results[ref_key]).mean(), macro(results[ref_ridge]).mean()
    caps = sorted(results[ref_key][0][0])
    print()
    print(f"held-out Spearman rho of each capability's predictor on {len(draws[0][3])} common 4-domain proxies, "
          f"mean over {len(draws)} seed(s) (sd of the macro); CV rho: {s.cv_folds}-fold on the fitted rows, "
          f"macro; new domain: {NEW_DOMAIN}; predictor: search.predictor={s.predictor} (kind as resolved)")
    head = f"{'arm':<27} {'new':>4} {'reused':>6} {'kind':>8} " + " ".join(f"{c[:13]:>13}" for c in caps)
    print(head + f" {'macro (sd)':>13} {'CV':>6} {'/ (a)':>6} {'/ (a) ridge':>11} {'new / N':>7}")
    for (name, k, reused), runs in results.items():
        m = macro(runs)
        per = {c: np.mean([h[c] for h, _, _ in runs]) for c in caps}
        cv = np.nanmean([c for _, c, _ in runs])
        kinds = "/".join(sorted({kd for _, _, kd in runs}))
        print(f"{name:<27} {k:>4} {reused:>6} {kinds:>8} " + " ".join(f"{per[c]:>13.3f}" for c in caps)
              + f" {m.mean():6.3f} ({m.std():.3f}) {cv:6.3f} {m.mean() / ref:6.2f} {m.mean() / ref_r:11.2f} {k / n_full:7.2f}")
    print("target (issue 19): reuse >= 0.95 of the full recompute's macro rho with <= 0.30 of its new evaluations")


if __name__ == "__main__":
    main()
