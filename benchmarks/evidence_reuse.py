"""Evidence reuse (issue 19): how good are the predictor and the chosen mixture made of a finished
search's evaluations plus k new proxies, against a full recompute with N new proxies, when a
domain is added and when a component is retrained?

On the embedded demo (the `demo` preset, overrides printed; prepare, base and the components
resumed from ``--out``). Every proxy is a real merged model scored on the default benchmarks (the
held-out bits per byte of every domain, one capability each).

**Scenario A: a domain added.** The search's 3 domains are general, math, code; the 4th, added
after it, is math_problems.

- *old evidence*: ``--old`` mixtures over the 3 domains (the search's sampler and bounds), scored
  as that search scored them: on the 3 domains' held-out text only (no ``heldout:math_problems``).
  As 4-domain proxies they are exact: weight 0 on math_problems is the same merged model.
- *(a) full recompute*: ``--full`` mixtures sampled over the 4 domains, every benchmark scored.
- *(b) reuse + k*: the old evidence plus the first k of the cover points the search plans for
  the new dimension (:func:`demix.search.planning.cover_points`), scored on every benchmark; the
  predictors are fitted as the search fits them (:func:`demix.search.fitting.fit_all`: each
  benchmark and capability on the rows that have it, each with its own kind, so
  ``math_problems`` on the k new rows).
- *(c) k only*: the same k new proxies without the old evidence (what reuse adds).

**Scenario R: a component retrained.** A finished search over the 4 domains, then the component
of ``--retrain`` (default code) trained again from the same base with another seed and 1.5x its
tokens. A merged proxy depends only on the components it gives non-zero weight, so only rows
that used the retrained component are stale. With the default sampler nearly every row uses
every component (retraining one stales almost everything), so this scenario samples every set
with ``search.sampler.min_weight`` = ``--min-weight`` (default 0.2: weights below it are set to 0):
about half the rows give the retrained domain weight 0.

- *old evidence*: ``--old`` sparse mixtures scored on the original components; the rows with
  weight 0 on the retrained domain stay valid, the others are stale (set aside, never fitted).
- *(a) full recompute*: ``--full`` sparse mixtures on the retrained components.
- *(b) reuse + k*: the valid old rows plus the first k stale mixtures evaluated again on the
  retrained components (what the search does: it evaluates a stale row again when it plans it).
- *(c) k only*: those k re-evaluated proxies alone.

**Yardsticks.** (1) Spearman rho of each capability's predictor on a common held-out set of
``--test`` proxies of the scenario's components (sampled as the full recompute's),
macro-averaged, and its k-fold CV rho; the ratio to the full recompute of the same predictor
kind, and the new proxy evaluations as a share of N. (2) The regret of the chosen mixture, the
search-efficiency benchmark's yardstick: the pool (``search.pool_size`` candidates, the
scenario's sampler) ranked by the ``weighted`` objective (equal weights: the mean capability,
which a measured proxy gives directly; ``rank_mean`` has no measured value), the top-k mean
merged and evaluated, and regret = best measured objective over a dense set of the scenario's
merged proxies (every proxy of every set and seed, evaluated before any choice) minus the
chosen proxy's measured objective (negative: better than every dense proxy); rank = 1 + dense
proxies measured better.

Scores are cached in ``<out>/evidence_reuse_scores.json`` (original components) and
``<out>/evidence_reuse_scores_retrained_<domain>.json``: a re-run evaluates nothing again. The
tokenizer is the 4-domain run's (a real added domain keeps the 3-domain one; the components of
general, math and code are the same either way: each is trained on its domain and general).

usage: OMP_NUM_THREADS=1 python benchmarks/evidence_reuse.py [--out runs/evidence_reuse]
           [--old 32] [--full 32] [--k 4,8,12] [--test 24] [--seeds 3] [--retrain code]
           [--min-weight 0.2] [--scenarios added,retrained] [-s key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

OLD_DOMAINS = ["general", "math", "code"]
NEW_DOMAIN = "math_problems"
#: The retrained component's recipe: another seed and this many times its tokens.
RETRAIN_SEED, RETRAIN_TOKEN_FACTOR = 1, 1.5


class Scores:
    """Merged proxies of one set of components, scored once and cached by mixture key."""

    def __init__(self, config: Any, run: Any, file: Path) -> None:
        self.config, self.run, self.file = config, run, file
        self.cache: dict[str, dict] = json.loads(file.read_text()) if file.is_file() else {}
        self.builder: Any = None
        self.evaluator: Any = None
        self.evaluated = 0

    def __getitem__(self, m: dict[str, float]) -> dict:
        return self.cache[_key(m)]

    def ensure(self, mixtures: list[dict[str, float]], label: str) -> None:
        from demix.evaluation import Evaluator
        from demix.merging import ProxyBuilder

        todo = list({_key(m): m for m in mixtures if _key(m) not in self.cache}.values())
        if not todo:
            return
        print(f"  {label}: {len(todo)} proxies to evaluate", flush=True)
        t0 = time.perf_counter()
        for i, m in enumerate(todo):
            if self.builder is None:
                self.builder = ProxyBuilder.from_run(self.config, self.run, "cpu")
                self.evaluator = Evaluator.from_run(self.config, self.run, "cpu")
            self.builder.build(m)
            r = self.evaluator.evaluate(self.builder.model)
            self.cache[_key(m)] = {"benchmarks": dict(r.benchmarks), "capabilities": dict(r.capabilities),
                                   "higher_is_better": dict(r.higher_is_better)}
            self.file.write_text(json.dumps(self.cache))  # every evaluation kept: a kill loses nothing
            self.evaluated += 1
            if (i + 1) % 20 == 0 or i + 1 == len(todo):
                print(f"    {i + 1}/{len(todo)} ({(time.perf_counter() - t0) / (i + 1):.1f} s each)", flush=True)

    def objective(self, m: dict[str, float]) -> float:
        """The ``weighted`` objective with equal weights, measured: the mean capability."""
        caps = self[m]["capabilities"]
        return float(sum(caps.values()) / len(caps))


def _key(m: dict[str, float]) -> str:
    from demix.mixtures import mixture_key

    return mixture_key(m)


def _rows(domains, W) -> list[dict[str, float]]:
    return [{d: float(x) for d, x in zip(domains, row)} for row in W]


def _evaluation(i, m, scores, drop=None):
    from demix.store import Evaluation

    bench = {b: v for b, v in scores["benchmarks"].items() if b != drop}
    caps = {c: v for c, v in scores["capabilities"].items() if drop is None or c != drop.split(":", 1)[1]}
    hib = {b: v for b, v in scores["higher_is_better"].items() if b in bench}
    return Evaluation(i, _key(m), "merged", 0, dict(m), bench, caps, {"higher_is_better": hib}, "", "")


def _with(config, overrides):
    return _with_data(config.model_dump(mode="json"), overrides)


def _with_data(data, overrides=None):
    from demix.config import config_from_dict

    return config_from_dict(data, overrides)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/evidence_reuse", help="run directory (resumed when it exists)")
    ap.add_argument("--old", type=int, default=32, help="evaluations of the finished search")
    ap.add_argument("--full", type=int, default=32, help="N: proxies of the full recompute")
    ap.add_argument("--k", default="4,8,12", help="new proxies added to the reused evidence, comma-separated")
    ap.add_argument("--test", type=int, default=24, help="common held-out proxies")
    ap.add_argument("--seeds", type=int, default=3, help="independent draws of every set (table: mean and sd)")
    ap.add_argument("--retrain", default="code", help="scenario R: the domain whose component is retrained")
    ap.add_argument("--min-weight", type=float, default=0.2, help="scenario R: search.sampler.min_weight")
    ap.add_argument("--scenarios", default="added,retrained", help="which scenarios to run, comma-separated")
    ap.add_argument("-s", "--set", dest="overrides", action="append", default=[], help="extra config override")
    args = ap.parse_args()
    # RidgeCV's leave-one-out divides by zero on a constant target of a few rows (it still fits).
    warnings.filterwarnings("ignore", message="invalid value encountered in divide", category=RuntimeWarning)
    ks = sorted(int(k) for k in args.k.split(","))
    scenarios = args.scenarios.split(",")
    t_start = time.perf_counter()

    from demix.config import save_config
    from demix.configs import load_preset
    from demix.prepare import prepare
    from demix.rundir import RunDir
    from demix.training import train_base, train_components

    overrides = [f"output_dir={args.out}", "train.device=cpu", "evaluation.device=cpu", "evaluation.heldout_tokens=4096",
                 *args.overrides]
    config = load_preset("demo", overrides)
    run = RunDir(config.run_dir)
    run.root.mkdir(parents=True, exist_ok=True)
    save_config(config, run.config)
    print("preset: demo, overrides:", " ".join(overrides), flush=True)
    assert set(config.data.domain_names) == {*OLD_DOMAINS, NEW_DOMAIN}, config.data.domain_names
    t0 = time.perf_counter()
    prepare(config, run, progress=False)
    train_base(config, run, show_progress=False)
    train_components(config, run, show_progress=False)
    print(f"[prepare, base, components: {time.perf_counter() - t0:.0f} s]", flush=True)
    original = Scores(config, run, run.root / "evidence_reuse_scores.json")
    evaluated = 0
    if "added" in scenarios:
        added(config, run, original, args, ks)
    if "retrained" in scenarios:
        evaluated += retrained(config, run, original, args, ks)
    print(f"\n[total wall time: {time.perf_counter() - t_start:.0f} s; proxies evaluated in this run: "
          f"{original.evaluated + evaluated}]")


def _space(config, run, domains=None):
    from demix.config import config_from_dict
    from demix.rundir import read_token_counts
    from demix.search.loop import _sampling_space
    from demix.training.roles import mixture_map

    if domains is not None:
        data = config.model_dump(mode="json")
        data["data"]["domains"] = [d for d in data["data"]["domains"] if d["name"] in domains]
        config = config_from_dict(data)
    tokens = read_token_counts(run, config.data.domain_names)
    bounds, prior = _sampling_space(config, tokens, mixture_map(config, run))
    return config, bounds, prior, tokens


def added(config, run, scores: Scores, args, ks) -> None:
    """Scenario A: a finished 3-domain search, then math_problems added."""
    import numpy as np

    from demix.sampling import sample_mixtures
    from demix.search.planning import Planner, cover_points

    config3, bounds3, prior3, _ = _space(config, run, OLD_DOMAINS)
    _, bounds4, prior4, tokens = _space(config, run)
    s, names = config.search, config.data.domain_names
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
    print(f"\n== scenario A: {NEW_DOMAIN} added to a finished search on {', '.join(OLD_DOMAINS)} ==")
    print(f"proxies per seed: {args.old} old, {args.full} full, {ks[-1]} new, {args.test} test; {args.seeds} seed(s)",
          flush=True)
    scores.ensure([m for d in draws for part in d for m in part], "scenario A sets")
    arms = []
    for old, full, new, _ in draws:
        # The old search scored no held-out math_problems: its rows carry 3 benchmarks and capabilities.
        old_rows = [_evaluation(i, m, scores[m], drop=f"heldout:{NEW_DOMAIN}") for i, m in enumerate(old)]
        full_rows = [_evaluation(1000 + i, m, scores[m]) for i, m in enumerate(full)]
        fresh = {k: [_evaluation(2000 + i, m, scores[m]) for i, m in enumerate(new[:k])] for k in ks}
        arms.append(_arms(config, full_rows, old_rows, fresh, ks))
    dense = list({_key(m): m for d in draws for part in d for m in part}.values())
    report(config, scores, draws, arms, ks, dense, tokens, config.search.sampler, bounds4, prior4,
           f"new domain: {NEW_DOMAIN}")


def retrained(config, run, original: Scores, args, ks) -> int:
    """Scenario R: a finished 4-domain search on sparse mixtures, then one component retrained.
    Returns how many proxies of the retrained components it evaluated."""
    import numpy as np

    from demix.rundir import RunDir
    from demix.sampling import sample_mixtures
    from demix.training.recipe import train_component

    d = args.retrain
    assert d in config.data.domain_names, d
    # The retrained component lives in a run directory beside the run's, sharing its data,
    # tokenizer and base; the run then takes it as a given component (train.components.paths).
    side = RunDir(run.root / f"retrained_{d}")
    for part in ("data", "tokenizer"):
        link = side.root / part
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(getattr(run, part).resolve(), target_is_directory=True)
    if not side.base.exists():
        side.base.parent.mkdir(parents=True, exist_ok=True)
        side.base.symlink_to(run.base.resolve(), target_is_directory=True)
    recipe = config.train.components
    config_t = _with(config, [f"output_dir={side.root}", f"train.components.seed={RETRAIN_SEED}",
                              f"train.components.tokens={int(recipe.tokens * RETRAIN_TOKEN_FACTOR)}"])
    t0 = time.perf_counter()
    train_component(config_t, side, d, show_progress=False)
    print(f"\n== scenario R: component {d} retrained (seed {RETRAIN_SEED}, {RETRAIN_TOKEN_FACTOR}x tokens: "
          f"{int(recipe.tokens * RETRAIN_TOKEN_FACTOR)}; {time.perf_counter() - t0:.0f} s) ==")
    sparse = [f"search.sampler.min_weight={args.min_weight}"]
    config_o = _with(config, sparse)
    data = config_o.model_dump(mode="json")
    data["train"]["components"]["paths"] = {d: str(side.component(d).resolve())}
    config_r = _with_data(data)
    retrained_scores = Scores(config_r, run, run.root / f"evidence_reuse_scores_retrained_{d}.json")
    _, bounds, prior, tokens = _space(config_o, run)
    s, names = config_o.search, config_o.data.domain_names
    draws, arms = [], []
    for seed in range(args.seeds):
        rng = [np.random.default_rng(100 + 10 * seed + i) for i in (1, 2, 3)]
        old = _rows(names, sample_mixtures(names, args.old, prior, s.sampler, bounds, rng[0]))
        full = _rows(names, sample_mixtures(names, args.full, prior, s.sampler, bounds, rng[1]))
        test = _rows(names, sample_mixtures(names, args.test, prior, s.sampler, bounds, rng[2]))
        valid = [m for m in old if round(m[d], 6) == 0]
        stale = [m for m in old if round(m[d], 6) != 0]
        draws.append((old, valid, stale, full, test))
    print(f"sampler.min_weight={args.min_weight}: of {args.old} old rows per seed, "
          f"{', '.join(str(len(x[1])) for x in draws)} valid (weight 0 on {d}), "
          f"{', '.join(str(len(x[2])) for x in draws)} stale; {args.full} full, {args.test} test", flush=True)
    if min(len(x[2]) for x in draws) < ks[-1]:
        print(f"  (fewer stale rows than k={ks[-1]} in some seed: that arm re-evaluates every stale row)")
    for seed, x in enumerate(draws):  # seed by seed: a run stopped early has its first seeds whole
        original.ensure(x[0], f"seed {seed}: old rows on the original components")
        retrained_scores.ensure([*x[2][: ks[-1]], *x[3], *x[4]], f"seed {seed}: sets on the retrained components")
    for _, valid, stale, full, _ in draws:
        old_rows = [_evaluation(i, m, original[m]) for i, m in enumerate(valid)]
        full_rows = [_evaluation(1000 + i, m, retrained_scores[m]) for i, m in enumerate(full)]
        fresh = {k: [_evaluation(2000 + i, m, retrained_scores[m]) for i, m in enumerate(stale[:k])] for k in ks}
        arms.append(_arms(config_o, full_rows, old_rows, fresh, ks))
    # Valid old rows are exact proxies of the retrained set too (the retrained domain at weight 0).
    for x in draws:
        for m in x[1]:
            retrained_scores.cache.setdefault(_key(m), original[m])
    dense = list({_key(m): m for x in draws for m in [*x[1], *x[2][: ks[-1]], *x[3], *x[4]]}.values())
    report(config_r, retrained_scores, [(x[1], x[3], x[2], x[4]) for x in draws], arms, ks, dense, tokens,
           s.sampler, bounds, prior, f"retrained: {d}; sampler.min_weight={args.min_weight}")
    return retrained_scores.evaluated


def _arms(config, full_rows, old_rows, fresh, ks):
    """name -> (rows fitted, predictor kind, new, reused) for one seed."""
    s = config.search
    out: dict[str, tuple] = {}
    for kind in (s.predictor, "ridge"):
        out[f"(a) full recompute, {kind}"] = (full_rows, kind, len(full_rows), 0)
    for k in ks:
        for kind in (s.predictor, "ridge"):
            out[f"(b) reuse + {k} new, {kind}"] = (old_rows + fresh[k], kind, len(fresh[k]), len(old_rows))
        out[f"(c) {k} new only, {s.predictor}"] = (fresh[k], s.predictor, len(fresh[k]), 0)
    return out


def report(config, scores: Scores, draws, arms, ks, dense, tokens, sampler, bounds, prior, label) -> None:
    """Fit every arm, choose its mixture, evaluate the chosen proxies, print the table."""
    import numpy as np
    from scipy.stats import spearmanr

    from demix.sampling import sample_mixtures
    from demix.search.fitting import fit_all, resolve_directions
    from demix.search.ranking import rank_pool
    from demix.training.roles import mixture_map

    rank_config = _with(config, ["search.objective=weighted", "search.capability_weights={}"])
    s, names = config.search, config.data.domain_names
    mapping = mixture_map(config, scores.run)
    results: dict[str, list[dict[str, Any]]] = {}
    chosen_all = []
    t0 = time.perf_counter()
    for seed, ((_, _, _, test), seed_arms) in enumerate(zip(draws, arms)):
        caps = sorted(scores[test[0]]["capabilities"])
        W_test = np.array([[m[d] for d in names] for m in test])
        truth = {c: np.array([scores[m]["capabilities"][c] for m in test]) for c in caps}
        pool = sample_mixtures(names, s.pool_size, prior, sampler, bounds, np.random.default_rng(1000 + seed))
        for name, (rows, kind, new, reused) in seed_arms.items():
            fit = fit_all(rows, names, resolve_directions(rows, config), kind, s.cv_folds, s.seed)
            pred = fit.capabilities.predict(W_test)
            held = {c: float(spearmanr(truth[c], pred[c]).statistic) for c in caps}
            cvs = [fit.cv.capabilities[c].spearman for c in caps]
            cv = float(np.mean([v for v in cvs if v is not None])) if any(v is not None for v in cvs) else float("nan")
            ranking = rank_pool(pool, fit, rank_config, tokens, mapping)
            chosen = {d: float(x) for d, x in zip(names, ranking.mean)}
            chosen_all.append(chosen)
            results.setdefault(name, []).append({"held": held, "cv": cv, "kind": fit.capabilities.kind, "new": new,
                                                 "reused": reused, "chosen": chosen})
    print(f"  [fits and rankings: {time.perf_counter() - t0:.0f} s]", flush=True)
    scores.ensure(chosen_all, "chosen mixtures")
    best = max(scores.objective(m) for m in dense)
    dense_values = np.array([scores.objective(m) for m in dense])
    n_full = len(draws[0][1])
    caps = sorted(next(iter(results.values()))[0]["held"])

    def macro(runs):
        return np.array([np.mean(list(r["held"].values())) for r in runs])

    refs = {name.rsplit(", ", 1)[1]: macro(runs).mean() for name, runs in results.items() if name.startswith("(a)")}
    print(f"\n{label}; held-out Spearman rho of each capability's predictor on {len(draws[0][3])} common proxies, "
          f"mean over {len(draws)} seed(s) (sd of the macro); CV: {s.cv_folds}-fold rho on the fitted rows, macro; "
          f"'/ (a)': macro / the full recompute's with the same search.predictor (auto or ridge); kind: as resolved "
          f"per capability ('+': several in one fit, '/': different across seeds)")
    print(f"regret: best measured objective (mean capability) over {len(dense)} dense proxies ({best:.4f}) minus the "
          f"chosen proxy's (top {s.top_k} of a {s.pool_size} pool, weighted objective), mean (max) over seeds "
          f"(a dense proxy's regret: median {np.median(best - dense_values):.4f}); rank: 1 + dense proxies better, mean")
    head = f"{'arm':<29} {'new':>4} {'reused':>6} {'kind':>15} " + " ".join(f"{c[:13]:>13}" for c in caps)
    print(head + f" {'macro (sd)':>13} {'CV':>6} {'/ (a)':>6} {'new / N':>7} {'regret (max)':>16} {'rank':>6}")
    verdicts = []
    ref_regret: dict[str, float] = {}
    for name, runs in results.items():
        m = macro(runs)
        kind_arg = name.rsplit(", ", 1)[1]
        per = {c: np.mean([r["held"][c] for r in runs]) for c in caps}
        cv = np.nanmean([r["cv"] for r in runs])
        kinds = "/".join(sorted({r["kind"] for r in runs}))
        regret = np.array([best - scores.objective(r["chosen"]) for r in runs])
        rank = np.mean([1 + int((dense_values > scores.objective(r["chosen"])).sum()) for r in runs])
        new = int(np.mean([r["new"] for r in runs]))
        reused = int(round(np.mean([r["reused"] for r in runs])))
        ratio = m.mean() / refs[kind_arg]
        print(f"{name:<29} {new:>4} {reused:>6} {kinds:>15} " + " ".join(f"{per[c]:>13.3f}" for c in caps)
              + f" {m.mean():6.3f} ({m.std():.3f}) {cv:6.3f} {ratio:6.2f} {new / n_full:7.2f} "
              f"{regret.mean():8.4f} ({regret.max():.4f}) {rank:6.1f}")
        if name.startswith("(a)"):
            ref_regret[kind_arg] = float(regret.mean())
        if name.startswith("(b)"):
            verdicts.append((new / n_full, ratio, name, float(regret.mean())))
    met: dict[str, str] = {}
    low: dict[str, str] = {}
    for share, ratio, name, regret_b in sorted(verdicts):
        kind_arg, arm = name.rsplit(", ", 1)[1], name.split(", ")[0][4:]
        if share <= 0.30 and ratio >= 0.95 and kind_arg not in met:
            met[kind_arg] = f"{kind_arg} from {arm} ({ratio:.2f} of (a) at {share:.2f} of N)"
        if regret_b <= ref_regret[kind_arg] and kind_arg not in low:
            low[kind_arg] = f"{kind_arg} from {arm} ({regret_b:.4f} vs {ref_regret[kind_arg]:.4f} at {share:.2f} of N)"
    print("target (issue 19): reuse >= 0.95 of the full recompute's macro rho (same search.predictor) with <= 0.30 of its new "
          f"evaluations: {'met, ' + '; '.join(met.values()) if met else 'NOT met'}")
    print("regret of the chosen mixture at most the full recompute's (same search.predictor): "
          + ("; ".join(low.get(k, f"{k}: at no k") for k in ref_regret)))

if __name__ == "__main__":
    main()
