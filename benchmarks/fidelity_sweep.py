"""Why do merged proxies rank mixtures as well as they do, and no better? One knob at a time.

Starts from a finished fidelity run (e.g. the one `benchmarks/fidelity_vs_compute.py` leaves) and,
for each variant (config overrides), makes a sibling run directory that reuses every model the
variant does not change, retrains the rest, and runs the fidelity stage on the same reference
mixtures:

- a variant of the components' recipe (``train.components.*``) or of the merge (``merge.*``) keeps
  the data, base, reference models and trained proxies (hard links), and retrains and merges only
  the components: "which components predict the same ground truth best?";
- a variant of the reference recipe (``train.reference.*``) also retrains the reference models,
  and one of ``train.trained_proxy.*`` the trained proxies;
- a variant of the model or of the base recipe (``model.*``, ``train.base.*``) retrains everything
  from a new base;
- a variant of the benchmarks (``evaluation.*``) retrains nothing: the fidelity stage evaluates
  the stored models again on the new benchmark set.

Prints one row per variant: merged proxies' macro rho with its bootstrap CI, top-25% rho, CRR,
the best trained proxy's rho at each budget, the merge audit (relative delta, proxy gap), and what
was retrained; then rho per capability. Also the "weights-only" row: the rank correlation of each
domain's held-out score with that domain's share of the reference's data mixture (no model at all), which tells
how much of the ranking any proxy gets for free on these benchmarks.

usage: OMP_NUM_THREADS=1 python benchmarks/fidelity_sweep.py --source runs/fidelity_bench --out runs/sweep \
           --variant 'share0.3: train.components.general_share=0.3' \
           --variant 'ctok200k: train.components.tokens=200000' ...

Each variant resumes from what its directory holds; its numbers go to ``<out>/<name>/fidelity/``
and the table to ``<out>/sweep.json``. The source's own fidelity stage is run again first (it
reuses everything), with its reference mixtures pinned by value in its ``config.yaml``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sqlite3
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402

from demix.proxy_kind import MERGED, REFERENCE  # noqa: E402
from fidelity_vs_compute import fmt_stat  # noqa: E402  (the sibling script: same cell format)


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, rest = text.partition(":")
    if not rest.strip() and "=" in name:
        raise SystemExit(f"variant '{text}' has no name: write 'NAME: key=value key=value'")
    return name.strip(), shlex.split(rest)  # quotes keep a YAML value with spaces in one override


def link_tree(src: Path, dst: Path) -> None:
    """Hard-link copy: training and the stage replace files atomically, never write into them."""
    shutil.copytree(src, dst, copy_function=os.link, symlinks=True)


def prepare_variant(source: Path, root: Path, src_cfg, cfg) -> list[str]:
    """Fill ``root`` from ``source`` with everything the variant leaves unchanged; return what
    it must retrain."""
    from demix.training import reference_recipe

    if src_cfg.data != cfg.data or src_cfg.tokenizer != cfg.tokenizer:
        raise SystemExit("variants of data or tokenizer need a new run: use benchmarks/fidelity_vs_compute.py")
    keep_base = src_cfg.model == cfg.model and src_cfg.train.base == cfg.train.base
    keep_components = keep_base and src_cfg.train.components == cfg.train.components
    keep_refs = keep_base and reference_recipe(src_cfg) == reference_recipe(cfg)
    keep_trained = keep_base and src_cfg.train.trained_proxy == cfg.train.trained_proxy
    retrain = [name for name, keep in (("base", keep_base), ("components", keep_components),
                                      ("references", keep_refs), ("trained proxies", keep_trained)) if not keep]
    if root.exists():
        return retrain  # resumed: the directory was set up by an earlier call
    root.mkdir(parents=True)
    for name in ("data", "tokenizer"):
        link_tree(source / name, root / name)
    models = root / "models"
    models.mkdir()
    for name, keep in (("base", keep_base), ("components", keep_components), ("references", keep_refs),
                       ("trained_proxies", keep_trained)):
        if keep and (source / "models" / name).is_dir():
            link_tree(source / "models" / name, models / name)
    # The store: a real copy without the rows of models this variant retrains. Merged rows made
    # from other components are refused by the stage, so they go with the components.
    shutil.copy2(source / "store.sqlite", root / "store.sqlite")
    drop = []
    if not keep_components:
        drop.append(f"proxy_kind = '{MERGED}'")
    if not keep_refs:
        drop.append(f"proxy_kind = '{REFERENCE}'")
    if not keep_trained:
        drop.append("proxy_kind LIKE 'trained@%'")
    with sqlite3.connect(root / "store.sqlite") as db:
        for cond in drop:
            db.execute(f"DELETE FROM evaluations WHERE {cond}")
        # The search's rows belong to the source run's search, not to this sweep.
        db.execute(f"DELETE FROM evaluations WHERE proxy_kind = '{MERGED}' AND json_extract(provenance, '$.source') = 'demix search'")
    return retrain


def weights_only_rho(result, domains: list[str], own_domain: dict[str, str]) -> dict[str, float]:
    """Spearman between a capability's reference score and its own domain's share of the data
    mixture the reference was trained on (the capability named after the domain, or as given by
    --own-domain)."""
    from scipy.stats import spearmanr

    rep = result.reports[MERGED]
    weights = {m.key: m.data_mixture for m in result.mixtures}
    out = {}
    for name, t in rep.targets.items():
        d = own_domain.get(name, name if name in domains else None)
        if not t.capability or d is None:
            continue
        keys = sorted(t.scores)
        out[name] = float(spearmanr([t.scores[k][0] for k in keys], [weights[k][d] for k in keys]).statistic)
    return out


def component_gain(run, domains: list[str]) -> dict[str, float]:
    """Held-out loss (nats/token) each component gained on its own domain over the base."""
    from demix.checkpoints import is_finished, read_provenance

    out = {}
    for d in domains:
        if is_finished(run.component(d)):
            h = read_provenance(run.component(d)).details.get("heldout_loss", {}).get(d)
            if h:
                out[d] = h["before"] - h["after"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", required=True, help="a run directory whose fidelity stage has run")
    ap.add_argument("--out", required=True, help="directory of the variants' run directories")
    ap.add_argument("--variant", action="append", default=[], help="'NAME: key=value key=value ...'")
    ap.add_argument("--own-domain", action="append", default=[], metavar="CAPABILITY=DOMAIN",
                    help="the domain whose weight is the weights-only proxy of a capability not named after a domain")
    args = ap.parse_args()

    from demix.config import load_config, save_config
    from demix.fidelity.files import read_mixtures_file
    from demix.fidelity.stage import run_fidelity
    from demix.prepare import prepare
    from demix.rundir import RunDir, write_json
    from demix.training import train_base, train_components

    own_domain = dict(item.split("=", 1) for item in args.own_domain)
    source = Path(args.source).resolve()
    out = Path(args.out).resolve()
    src_cfg = load_config(source / "config.yaml")
    domains = src_cfg.data.domain_names
    # Every variant is measured on the source's reference mixtures, pinned by value (a variant may
    # add more with fidelity.num_references / fidelity.seed): under the data_mixture pairing the
    # data mixtures, so that a variant of the components (another general share: another map
    # from component weights to data) is compared on the same reference models.
    recorded = read_mixtures_file(RunDir(source).fidelity_files.mixtures)
    pinned = [m.data_mixture if recorded.pairing == "data_mixture" else m.component_weights for m in recorded.mixtures]
    pin = [f"fidelity.mixtures={json.dumps(pinned)}", "fidelity.num_references=0",
           f"fidelity.pairing={recorded.pairing}"]
    rows = []
    variants = [("source", [])] + [parse_variant(v) for v in args.variant]
    for name, overrides in variants:
        root = source if name == "source" else out / name
        cfg = load_config(source / "config.yaml", [*pin, *overrides, f"output_dir={root}"])
        print(f"== {name}: {' '.join(overrides) or '(the source run)'}", flush=True)
        retrain = [] if name == "source" else prepare_variant(source, root, src_cfg, cfg)
        run = RunDir(root)
        save_config(cfg, run.config)
        t0 = time.perf_counter()
        prepare(cfg, run, progress=False)
        train_base(cfg, run, show_progress=False)
        train_components(cfg, run, show_progress=False)
        result = run_fidelity(cfg, run, progress=False, device="cpu")
        seconds = time.perf_counter() - t0
        row = {"variant": name, "overrides": overrides, "retrained": retrain,
               "rescored": cfg.evaluation != src_cfg.evaluation, "seconds": seconds,
               **measured(result, run, domains, own_domain)}
        rows.append(row)
        print(f"   {seconds:.0f} s, trained {result.trained_now}, evaluated {result.evaluated_now}, "
              f"merged macro rho {fmt_stat(result.reports[MERGED].macro['spearman'])}", flush=True)

    print_tables(rows)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "sweep.json", [{k: v for k, v in r.items() if k != "_result"} for r in rows])


def measured(result, run, domains: list[str], own_domain: dict[str, str]) -> dict:
    """What one variant's fidelity stage found, as a row of ``sweep.json`` (``_result`` is left out there)."""
    gaps = sorted(g.relative_distance for g in result.audit.gaps)
    return {
        "trained_now": result.trained_now,
        "evaluated_now": result.evaluated_now,
        "n": len(result.mixtures),
        "reports": {k: {"macro": {m: s.to_dict() for m, s in r.macro.items()},
                        "per_capability": {t.name: t.spearman.to_dict() for t in r.targets.values() if t.capability}}
                    for k, r in result.reports.items()},
        "flops_vs_demix": {r["approach"]: r.get("flops_vs_demix") for r in result.compute.get("rows", [])},
        "weights_only_rho": weights_only_rho(result, domains, own_domain),
        "proxy_gap_median": gaps[len(gaps) // 2] if gaps else None,
        "relative_delta": {d: g["all"].relative for d, g in result.audit.deltas.items()},
        "component_gain_nats": component_gain(run, domains),
        "audit_warnings": [w.message for w in result.audit.warnings()],
        "_result": result,
    }


def print_tables(rows: list[dict]) -> None:
    """One row per variant (merged and trained proxies' macro rho, audit), then rho per capability."""
    print()
    print(f"Fidelity of merged proxies against the reference models, one knob at a time (n = {rows[0]['n']} "
          "mixtures, 95% bootstrap CI)")
    budgets = [k for k in rows[0]["_result"].reports if k != MERGED]
    head = ("| variant | overrides | retrained | merged macro rho [CI] | top-25% rho | CRR | "
            + " | ".join(f"{b} rho; merged rho - this [paired CI]" for b in budgets)
            + " | rel. delta (mean) | proxy gap (median) | own-domain gain (nats, mean) |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        res = r["_result"]
        m = res.reports[MERGED].macro
        trained = " | ".join(
            f"{fmt_stat(res.reports[b].macro['spearman'])}; merged-this {fmt_stat(res.differences[b])}" if b in res.reports else "-"
            for b in budgets
        )
        delta = np.mean(list(r["relative_delta"].values())) if r["relative_delta"] else float("nan")
        gain = np.mean(list(r["component_gain_nats"].values())) if r["component_gain_nats"] else float("nan")
        gap = r["proxy_gap_median"] if r["proxy_gap_median"] is not None else float("nan")
        print(f"| {r['variant']} | {' '.join(r['overrides']) or '-'} | {', '.join(r['retrained']) or 'nothing'} | "
              f"{fmt_stat(m['spearman'])} | {fmt_stat(m['top_spearman'])} | {fmt_stat(m['crr'])} | {trained} | {delta:.3f} | "
              f"{gap:.2f} | {gain:.2f} |")
    print()
    print("rho per capability (trained proxies shown where the variant trained its own)")
    print("| variant | proxies | rho per capability [CI] |")
    print("|---|---|---|")
    for r in rows:
        res = r["_result"]
        for kind, rep in res.reports.items():
            if kind != MERGED and r["variant"] != "source" and not r["rescored"] and "references" not in r["retrained"] \
                    and "trained proxies" not in r["retrained"]:
                continue  # the same trained proxies and scores as the source row
            caps = [t for t in rep.targets.values() if t.capability]
            print(f"| {r['variant']} | {kind} | " + ", ".join(f"{t.name} {fmt_stat(t.spearman)}" for t in caps) + " |")
        w = r["weights_only_rho"]
        if w:
            print(f"| {r['variant']} | weights only (no model) | " + ", ".join(f"{c} {v:+.2f}" for c, v in w.items()) + " |")


if __name__ == "__main__":
    main()
