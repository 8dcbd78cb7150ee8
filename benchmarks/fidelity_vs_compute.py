"""The paper's comparison at the embedded scale: do merged proxies rank mixtures like really
trained reference models, better than trained proxies (RegMix style) of equal or larger compute?

Runs the embedded demo (the `demo` preset; overrides printed) end to end, resuming whatever its
run directory already holds:

1. prepare, base, components, and the search (when ``best_mixture.json`` is missing);
2. the fidelity stage with >= 8 reference mixtures: reference models, merged proxies, trained
   proxies at several token budgets (``-s fidelity.pairing=component_weights`` trains the
   references on the component weights taken as data, the pre-0.2 pairing; run it on the same
   ``--out`` to reuse base, components, search and merged proxies);
3. a model trained with the reference recipe on the chosen data mixture, the natural
   (token-proportional) data mixture and the uniform one, scored on the held-out benchmarks.

Each pairing's results are also kept as ``<run>/fidelity/benchmark-<pairing>.json`` (with the
merged report), and once both pairings have run, the paired difference of their merged macro
rho is printed (same mixtures, same merged proxies, the two sets of reference models).

Prints: rho (macro and per capability) with bootstrap CI, Kendall tau, top-25% rho, CRR and the
FLOPs of one search per approach (merged proxies vs trained proxies at each budget), then the
three final models side by side with the composite objective. Targets (issue 7): merged macro
rho >= 0.85; merged ahead of trained proxies of equal or larger compute; the chosen mixture no
worse than both baselines on the composite objective.

On a shared 2-core machine run it with OMP_NUM_THREADS=1: with another job or two running,
torch's 2 OpenMP threads spin against each other (measured: about 12-30 s per base training step
with 2 threads vs about 1 s with 1 thread, same load).

usage: OMP_NUM_THREADS=1 python benchmarks/fidelity_vs_compute.py [--out runs/fidelity_bench] [--references 8]
           [--budgets 12288,24576,49152] [-s key=value ...]
"""

from __future__ import annotations

import argparse
import math
import os
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def fmt_stat(st) -> str:
    if not st.defined:
        return "undef"
    if math.isnan(st.ci_low):
        return f"{st.value:+.2f}"
    return f"{st.value:+.2f} [{st.ci_low:+.2f},{st.ci_high:+.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/fidelity_bench", help="run directory (resumed when it exists)")
    ap.add_argument("--references", type=int, default=8, help="sampled reference mixtures (>= 8 for the comparison)")
    ap.add_argument("--budgets", default="12288,24576,49152", help="trained-proxy token budgets, comma-separated")
    ap.add_argument("-s", "--set", dest="overrides", action="append", default=[], help="extra config override")
    args = ap.parse_args()

    from demix.fidelity._records import nan_to_none
    from demix.fidelity.models import EvaluatedModels
    from demix.fidelity.stage import run_fidelity
    from demix.mixtures import mixture_key, prior_weights
    from demix.prepare import prepare
    from demix.proxy_kind import MERGED
    from demix.rundir import read_token_counts, write_json
    from demix.training import train_base, train_components

    config, run, overrides = setup(args)
    timings: dict[str, float] = {}

    def phase(name: str, fn):
        t0 = time.perf_counter()
        out = fn()
        timings[name] = time.perf_counter() - t0
        print(f"[{name}: {timings[name]:.0f} s]", flush=True)
        return out

    phase("prepare", lambda: prepare(config, run, progress=False))
    phase("base", lambda: train_base(config, run, show_progress=False))
    phase("components", lambda: train_components(config, run, show_progress=False))
    domains = config.data.domain_names
    token_counts = read_token_counts(run, domains)
    best = phase("search", lambda: search(config, run, token_counts))
    pairing = config.fidelity.pairing

    def on_event(kind, key, action):
        print(f"  {kind:<16} {key} {action}", flush=True)

    result = phase("fidelity", lambda: run_fidelity(config, run, progress=False, device="cpu", on_event=on_event))

    # The chosen data mixture against the baseline data mixtures: uniform and natural
    # (token-proportional). Reference models are trained on data mixtures, reachable by merging or not.
    finals = {"chosen": dict(best.mixture("data"))}
    for name, kind in (("uniform", "uniform"), ("natural", "tokens")):
        finals[name] = {d: float(x) for d, x in zip(domains, prior_weights(domains, kind, token_counts))}

    def train_finals():
        with EvaluatedModels(config, run, device="cpu", progress=False, on_event=on_event) as models:
            return {name: models.reference(m) for name, m in finals.items()}

    final_scores = phase("final models", train_finals)

    print_fidelity(result, config)
    print_groups(result)
    print_audit(result)
    rank_obj, mean_obj = print_finals(config, run, finals, final_scores)
    print_targets(result, rank_obj, mean_obj)
    print("timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    record = {
        "pairing": pairing,
        "overrides": overrides,
        "timings_s": timings,
        "finals": {n: {"weights": finals[n], "key": mixture_key(finals[n]), "benchmarks": final_scores[n].benchmarks,
                       "capabilities": final_scores[n].capabilities, "mean_capability": float(mean_obj[i]),
                       "rank_mean": float(rank_obj[i])} for i, n in enumerate(finals)},
        "summary": [row.to_dict() for row in result.summary],
        "mixtures": [m.to_dict() for m in result.mixtures],
        "merged_report": result.reports[MERGED].to_dict(),
        "groups": result.groups,
        "group_differences": {k: {g: st.to_dict() for g, st in per.items()} for k, per in result.group_differences.items()},
        "baselines": {k: r.to_dict() for k, r in result.baselines.items()},
        "rules": result.rules,
    }
    write_json(run.fidelity / "benchmark.json", nan_to_none(record))
    write_json(run.fidelity / f"benchmark-{pairing}.json", nan_to_none(record))
    print_pairings(run)


def print_pairings(run) -> None:
    """Merged proxies against references trained on data(a) and on a, once both pairings ran."""
    from demix.fidelity import FidelityReport, paired_difference
    from demix.fidelity.references import COMPONENT_WEIGHTS, DATA_MIXTURE
    from demix.rundir import read_json

    paths = {p: run.fidelity / f"benchmark-{p}.json" for p in (DATA_MIXTURE, COMPONENT_WEIGHTS)}
    if not all(path.is_file() for path in paths.values()):
        return
    reps = {p: FidelityReport.from_dict(read_json(path)["merged_report"]) for p, path in paths.items()}
    # Capabilities both runs scored (the benchmark set may have changed between them).
    caps = [n for n, t in reps[DATA_MIXTURE].targets.items() if t.capability and n in reps[COMPONENT_WEIGHTS].targets]
    print()
    print("Merged proxies against reference models trained on data(a) (pairing data_mixture) and on a "
          "(pairing component_weights)")
    print("| pairing | n | merged macro rho [CI] | " + " | ".join(f"rho {c}" for c in caps) + " | macro CRR |")
    print("|" + "---|" * (4 + len(caps)))
    for p, rep in reps.items():
        print(f"| {p} | {len(rep.mixtures)} | {fmt_stat(rep.macro['spearman'])} | "
              + " | ".join(fmt_stat(rep.targets[c].spearman) for c in caps) + f" | {fmt_stat(rep.macro['crr'])} |")
    if reps[DATA_MIXTURE].mixtures == reps[COMPONENT_WEIGHTS].mixtures:
        diff = paired_difference(reps[DATA_MIXTURE], reps[COMPONENT_WEIGHTS], same_references=False)
        print(f"macro rho (data_mixture) - macro rho (component_weights), paired bootstrap over the same "
              f"{diff.n} mixtures: {fmt_stat(diff)}")
    else:
        print("(the two pairings compared different mixtures: no paired difference)")


def setup(args):
    """(config, run directory, overrides) of the demo preset with this benchmark's overrides."""
    from demix.config import save_config
    from demix.configs import load_preset
    from demix.rundir import RunDir

    overrides = [
        f"output_dir={args.out}",
        f"fidelity.num_references={args.references}",
        f"fidelity.trained_proxy_budgets=[{args.budgets}]",
        "train.device=cpu",
        "evaluation.device=cpu",
        *args.overrides,
    ]
    config = load_preset("demo", overrides)
    run = RunDir(config.run_dir)
    run.root.mkdir(parents=True, exist_ok=True)
    save_config(config, run.config)  # so `demix report` and `demix fidelity` work on this run directory
    print("preset: demo, overrides:", " ".join(overrides))
    t = config.train
    print(f"model: hidden {config.model.hidden_size}, layers {config.model.num_layers}, seq {config.model.seq_len}; "
          f"base {t.base.tokens:,} tok, components {t.components.tokens:,} tok (general share "
          f"{t.components.general_share}, lr {t.components.lr}), references {t.reference.tokens:,} tok (lr {t.reference.lr}), "
          f"search rounds {config.search.rounds}, held-out tokens/domain {config.evaluation.heldout_tokens:,}")
    return config, run, overrides


def search(config, run, token_counts):
    """The chosen mixture (``best_mixture.json``, a :class:`demix.search.files.BestMixture`),
    searching for it when the run has none."""
    from demix.search import run_search
    from demix.search.files import BestMixture

    if run.best_mixture.is_file():
        return BestMixture.read(run.best_mixture)
    from demix.evaluation import Evaluator
    from demix.merging import ProxyBuilder

    builder = ProxyBuilder.from_run(config, run, "cpu")
    evaluator = Evaluator.from_run(config, run, "cpu")

    def scorer(m):
        builder.build(m)
        return evaluator.evaluate(builder.model)

    run_search(config, run, scorer, token_counts)
    return BestMixture.read(run.best_mixture)


def print_fidelity(result, config) -> None:
    """One row per proxy kind and no-model baseline: compute of a search and macro statistics."""
    from demix.fidelity.compute import approach_of
    from demix.proxy_kind import MERGED

    print()
    print(f"Fidelity against {len(result.mixtures)} reference models "
          f"({config.fidelity.confidence:.0%} bootstrap CI, {config.fidelity.bootstrap} resamples); "
          f"compute = one search of {result.compute['search_proxies']} proxies")
    caps = [n for n, tf in next(iter(result.reports.values())).targets.items() if tf.capability]
    head = ("| proxies | train tok/search | FLOPs/search | vs DeMix | macro rho [CI] | merged - this [paired CI] | "
            "macro tau | top-25% rho | macro CRR | " + " | ".join(f"rho {c}" for c in caps) + " |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    budgets = {b["approach"]: b for b in result.compute["budgets"]}
    demix_flops = budgets[approach_of(MERGED)]["flops"]
    for kind, rep in result.reports.items():
        b = budgets[approach_of(kind)]
        m = rep.macro
        diff = fmt_stat(result.differences[kind]) if kind in result.differences else "-"
        print(f"| {kind} | {b['train_tokens']:,} | {b['flops']:.3g} | {b['flops'] / demix_flops:.2f}x | "
              f"{fmt_stat(m['spearman'])} | {diff} | {fmt_stat(m['kendall'])} | {fmt_stat(m['top_spearman'])} | "
              f"{fmt_stat(m['crr'])} | " + " | ".join(fmt_stat(rep.targets[c].spearman) for c in caps) + " |")
    for kind, rep in result.baselines.items():
        m = rep.macro
        print(f"| {kind.replace('_', ' ')} (no model) | 0 | 0 | 0.00x | {fmt_stat(m['spearman'])} | - | "
              f"{fmt_stat(m['kendall'])} | {fmt_stat(m['top_spearman'])} | - | "
              + " | ".join(fmt_stat(rep.targets[c].spearman) if c in rep.targets else "-" for c in caps) + " |")
    print(f"(n = {len(result.mixtures)} mixtures; top-25% rho rests on "
          f"{next(iter(result.reports.values())).macro['top_spearman'].n} points; CRR on 2**-bits-per-byte)")


def print_groups(result) -> None:
    """Macro rho per target group (own: a training domain's held-out loss; transfer: the rest), with
    merged minus each proxy kind and no-model baseline over the group (paired bootstrap), the
    transfer targets one by one, and the compute multiple at which trained proxies catch up."""
    from demix.fidelity.compute import approach_of
    from demix.proxy_kind import MERGED

    if not result.groups:
        return
    budgets = {b["approach"]: b for b in result.compute["budgets"]}
    demix_flops = budgets[approach_of(MERGED)]["flops"]
    groups = list(result.groups)
    transfer = result.groups.get("transfer", [])
    print()
    print("By target group: " + "; ".join(f"{g}: {', '.join(c)}" for g, c in result.groups.items()))
    head = ("| proxies | vs DeMix | " + " | ".join(f"macro rho {g} [CI] | merged - this ({g})" for g in groups)
            + "".join(f" | rho {c}" for c in transfer) + " |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    kinds = {**result.reports, **result.baselines}
    for kind, rep in kinds.items():
        ratio = (f"{budgets[approach_of(kind)]['flops'] / demix_flops:.2f}x" if kind in result.reports else "0 (no model)")
        cells = []
        for g in groups:
            gm = rep.group_macro.get(g)
            diff = result.group_differences.get(kind, {}).get(g)
            cells.append(f"{fmt_stat(gm['spearman']) if gm else '-'} | {fmt_stat(diff) if diff is not None else '-'}")
        per = "".join(f" | {fmt_stat(rep.targets[c].spearman) if c in rep.targets else '-'}" for c in transfer)
        print(f"| {kind.replace('_', ' ')} | {ratio} | " + " | ".join(cells) + per + " |")
    for g in groups:
        catch = [k for k in result.reports if k != MERGED and g in result.group_differences.get(k, {})
                 and result.group_differences[k][g].defined and result.group_differences[k][g].value <= 0]
        costs = sorted((budgets[approach_of(k)]["flops"] / demix_flops, k) for k in catch)
        print(f"{g} targets: trained proxies catch up with merged (point estimate of merged - this <= 0) from "
              + (f"{costs[0][1]} ({costs[0][0]:.2f}x DeMix's compute)" if costs else "none of the budgets measured"))
    if result.rules:
        print("linear rule chosen most often: " + "; ".join(f"{t} {r}" for t, r in result.rules.items()
                                                             if not t.startswith("benchmark:")))


def print_audit(result) -> None:
    print()
    print("Audit warnings:" if result.audit.warnings() else "Audit: no warnings")
    for w in result.audit.warnings():
        print(f"  {w.severity}: {w.message}")
    gaps = [g.relative_distance for g in result.audit.gaps]
    if gaps:
        print(f"proxy gap ||proxy - reference|| / ||reference - base||: median {sorted(gaps)[len(gaps) // 2]:.2f}, "
              f"range {min(gaps):.2f}-{max(gaps):.2f}")
    print("relative delta ||delta|| / ||base|| (all tensors): " + ", ".join(
        f"{d} {g['all'].relative:.3f}" for d, g in result.audit.deltas.items()))


def print_finals(config, run, finals, final_scores):
    """The final models' table; returns their composite objectives (rank-mean, mean capability).

    Rank-mean is the search's objective: the mean over capabilities of the percentile rank among
    every reference-recipe model trained in this run; the other is the equal-weight mean of
    capability scores."""
    import numpy as np

    from demix.evaluation import resolve_benchmarks, resolve_capabilities
    from demix.mixtures import mixture_key
    from demix.objectives import objective_values
    from demix.proxy_kind import REFERENCE
    from demix.store import Store

    final_keys = {mixture_key(m) for m in finals.values()}
    with Store(config.store.url or run.store_url) as store:
        # The other reference-recipe models (the finals are stored as reference rows too).
        pool = [e for e in store.evaluations_done(REFERENCE) if e.mixture_key not in final_keys]
    bench_order = resolve_benchmarks(config)
    caps_all = [c.name for c in resolve_capabilities(config, bench_order)]
    # Reference rows scored on another benchmark set (left from an earlier pairing or benchmark
    # set, not re-evaluated by this fidelity stage) cannot be ranked on these capabilities.
    pool = [e for e in pool if all(c in e.capabilities for c in caps_all)]
    pool_scores = np.array([[e.capabilities[c] for c in caps_all] for e in pool])
    final_rows = np.array([[final_scores[n].capabilities[c] for c in caps_all] for n in finals])
    both = np.vstack([pool_scores, final_rows])
    rank_obj = objective_values("rank_mean", both, caps_all, config.search.capability_weights)[-len(finals):]
    mean_obj = objective_values("weighted", final_rows, caps_all, config.search.capability_weights)
    print()
    print(f"Models trained with the reference recipe ({config.train.reference.tokens:,} tokens) on three data "
          "mixtures, held-out bits per byte (lower is better)")
    bench = [b.name for b in bench_order]
    head = "| mixture | data mixture | " + " | ".join(bench) + " | mean capability | rank-mean objective |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for i, (name, m) in enumerate(finals.items()):
        s = final_scores[name]
        weights = ", ".join(f"{d} {w:.2f}" for d, w in m.items())
        print(f"| {name} | {weights} | " + " | ".join(f"{s.benchmarks[b]:.4f}" for b in bench)
              + f" | {mean_obj[i]:+.4f} | {rank_obj[i]:.3f} |")
    print(f"(rank-mean: mean over capabilities of the percentile rank among all {len(both)} reference-recipe models)")
    return rank_obj, mean_obj


def print_targets(result, rank_obj, mean_obj) -> None:
    """Issue 7's targets, met or not."""
    from demix.fidelity.compute import approach_of
    from demix.proxy_kind import MERGED

    budgets = {b["approach"]: b for b in result.compute["budgets"]}
    demix_flops = budgets[approach_of(MERGED)]["flops"]
    merged = result.reports[MERGED].macro["spearman"]
    trained = {k: r.macro["spearman"] for k, r in result.reports.items() if k != MERGED}
    # Ahead = the paired interval of (merged rho - trained rho) lies above 0; tied = it contains 0.
    costly = [k for k, v in trained.items() if budgets[k]["flops"] >= demix_flops and v.defined]
    ahead = bool(costly) and all(result.differences[k].ci_low > 0 for k in costly)
    tied = not ahead and all(result.differences[k].ci_high >= 0 for k in costly)
    rank_ok = rank_obj[0] >= max(rank_obj[1:])
    mean_ok = mean_obj[0] >= max(mean_obj[1:])
    print()
    verdict = ("not measured (no trained-proxy budget costs as much as DeMix here)" if not costly else
               "MET" if ahead else "NOT MET (tied: the paired CI contains 0)" if tied else "NOT MET (behind)")
    print(f"targets: merged macro rho >= 0.85: {'MET' if merged.defined and merged.value >= 0.85 else 'NOT MET'} "
          f"({merged.value:.3f}); merged ahead of trained proxies of >= compute (paired CI above 0): {verdict}; "
          f"chosen no worse than natural and uniform: on the search's objective "
          f"(rank-mean): {'MET' if rank_ok else 'NOT MET'}, on the mean capability score: "
          f"{'MET' if mean_ok else 'NOT MET'}")


if __name__ == "__main__":
    main()
