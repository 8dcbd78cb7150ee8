"""Fidelity where the question is hard (issue 17): transfer targets on a pretrained base.

The `smollm2` preset (SmolLM2-135M, continued pretraining at the preset's component budget) with:

- transfer targets: held-out bits per byte of a corpus no component trains on (the half of the
  standard library's source that builtin:code leaves out, `fidelity_transfer_corpus.py`) and
  HumanEval bits per byte (a shipped lm-eval task, `--humaneval-limit` problems); the four
  training domains' own held-out loss stays in as the "own" group;
- >= 12 reference models, each trained with the reference recipe on the data mixture its merged
  proxy stands for (`fidelity.pairing: data_mixture`);
- merged proxies, and trained proxies at `--multiples` of the merged approach's compute (one
  search of `fidelity.search_proxies` proxies: components + that many merged evaluations, vs that
  many trainings + evaluations; each budget rounded to whole optimizer steps, at least one, and
  its real multiple printed);
- the no-model baselines (own weight; the cross-validated best single linear rule of the weights).

The stage is run stepwise so that every step leaves finished, reportable results: first the
reference models and merged proxies only, then with each trained-proxy budget added in the order
1x, 2x, 0.5x, 4x (cheapest informative first); each step resumes the last (nothing is trained or
evaluated twice) and prints its tables. Run it in the background and read the log; a killed run
resumes where it stopped.

Prints per step: rho per target and macro per group (own, transfer) for every proxy kind and
baseline, top-25% rho (when >= 13 mixtures), CRR, merged minus each (paired bootstrap), the compute
multiples, and the multiple at which trained proxies catch up on the transfer targets.

usage: OMP_NUM_THREADS=1 python benchmarks/fidelity_pretrained.py --out /tmp/fid_smollm2 [--base models/smollm2-135m]
           [--references 12] [--multiples 0.5,1,2,4] [--humaneval-limit 16] [--plan] [-s key=value ...]

A missing base is an error naming the path and how to make it (`make smollm2`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fidelity_vs_compute import fmt_stat, print_groups  # noqa: E402  (the sibling script: same formats)

#: Order in which trained-proxy multiples are added (each step is a finished result).
STEP_ORDER = (1.0, 2.0, 0.5, 4.0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/fidelity_smollm2", help="run directory (resumed when it exists)")
    ap.add_argument("--base", default="models/smollm2-135m", help="the converted base (model.base_path and tokenizer.path)")
    ap.add_argument("--references", type=int, default=12, help="sampled reference mixtures (>= 12 for the experiment)")
    ap.add_argument("--multiples", default="0.5,1,2,4", help="trained-proxy compute as multiples of the merged approach's")
    ap.add_argument("--humaneval-limit", type=int, default=16, help="HumanEval problems scored (0: leave the task out)")
    ap.add_argument("--transfer-bytes", type=int, default=400_000, help="bytes of the transfer corpus written")
    ap.add_argument("--plan", action="store_true", help="print the budgets and token counts, train nothing")
    ap.add_argument("-s", "--set", dest="overrides", action="append", default=[], help="extra config override")
    return ap.parse_args(argv)


def build_config(args: argparse.Namespace):
    """(config, run directory, overrides): the smollm2 preset with this experiment's settings. A
    missing base is the preset's DemixError (it names the path and `make smollm2`)."""
    from demix.configs import load_preset
    from demix.rundir import RunDir

    out = Path(args.out)
    corpus = out.parent / f"{out.name}-transfer" / "stdlib_other.jsonl"
    benchmarks = [f'{{name: "heldout:{d}", domain: {d}}}' for d in ("general", "math", "math_problems", "code")]
    if args.humaneval_limit > 0:
        benchmarks.append(f"{{name: humaneval_bpb, evaluator: lm_eval, task: demix_humaneval_bpb, metric: bits_per_byte, "
                          f"limit: {args.humaneval_limit}}}")
    overrides = [
        f"output_dir={out}",
        f"model.base_path={args.base}",
        f"tokenizer.path={args.base}",
        f"fidelity.num_references={args.references}",
        "fidelity.pairing=data_mixture",
        "fidelity.train_proxies=false",
        f"evaluation.benchmarks=[{', '.join(benchmarks)}]",
        f"fidelity.transfer=[{{name: stdlib_other, source: {corpus}, license: PSF-2.0}}]",
        "train.device=cpu",
        "evaluation.device=cpu",
        *args.overrides,
    ]
    config = load_preset("smollm2", overrides)
    return config, RunDir(config.run_dir), overrides, corpus


def trained_budgets(config, component_tokens: dict[str, int], multiples: list[float]) -> dict[float, tuple[int, float]]:
    """Multiple -> (tokens per trained proxy, the real multiple after rounding to whole steps).

    Both approaches evaluate ``S`` proxies of ``E`` held-out tokens each; DeMix also trains the
    components (``C`` tokens), the baseline ``S`` proxies of ``B`` tokens. With 6 N D to train and
    2 N D to evaluate (N cancels): ``6 S B + 2 S E = m (6 C + 2 S E)``."""
    from demix.fidelity.compute import heldout_eval_tokens

    s = config.fidelity.search_proxies or sum(config.search.rounds)
    e = heldout_eval_tokens(config)
    c = sum(component_tokens.values())
    demix = 6 * c + 2 * s * e
    step = config.train.trained_proxy.batch_size * config.model.seq_len
    out = {}
    for m in multiples:
        tokens = (m * demix - 2 * s * e) / (6 * s)
        steps = max(1, round(tokens / step))
        real = (6 * s * steps * step + 2 * s * e) / demix
        out[m] = (steps * step, real)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from demix.errors import DemixError

    try:
        return run(args)
    except DemixError as exc:
        print(f"error: {exc.what}", file=sys.stderr)
        if exc.fix:
            print(f"  fix: {exc.fix}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    from demix.checkpoints import component_dirs, is_finished, read_provenance
    from demix.config import save_config
    from demix.fidelity._records import nan_to_none
    from demix.fidelity.stage import run_fidelity
    from demix.prepare import prepare
    from demix.rundir import write_json
    from demix.training import train_components

    config, run_dir, overrides, corpus = build_config(args)
    print("preset: smollm2, overrides:", " ".join(overrides), flush=True)
    multiples = [float(m) for m in args.multiples.split(",") if m.strip()]
    run_dir.root.mkdir(parents=True, exist_ok=True)
    if not corpus.exists():
        write_transfer_corpus(corpus, args.transfer_bytes)
    timings: dict[str, float] = {}

    def phase(name: str, fn):
        t0 = time.perf_counter()
        out = fn()
        timings[name] = time.perf_counter() - t0
        print(f"[{name}: {timings[name]:.0f} s]", flush=True)
        return out

    c = config.train.components
    planned = {d: c.tokens for d in config.data.domain_names}
    plan = trained_budgets(config, planned, multiples)
    print("trained-proxy budgets (tokens per proxy, real multiple of DeMix's compute): "
          + ", ".join(f"{m:g}x -> {t:,} ({r:.2f}x)" for m, (t, r) in plan.items()), flush=True)
    refs = args.references
    total = (len(planned) * c.tokens + refs * config.train.reference.tokens + refs * sum(t for t, _ in plan.values()))
    print(f"training tokens in all: {total:,} (components {len(planned) * c.tokens:,}, references "
          f"{refs * config.train.reference.tokens:,}, trained proxies {refs * sum(t for t, _ in plan.values()):,})", flush=True)
    if args.plan:
        return 0

    save_config(config, run_dir.config)
    phase("prepare", lambda: prepare(config, run_dir, progress=False))
    phase("components", lambda: train_components(config, run_dir, show_progress=False))
    seen = {d: read_provenance(p).tokens_seen or c.tokens for d, p in component_dirs(config, run_dir).items()
            if is_finished(p)}
    plan = trained_budgets(config, seen, multiples)

    def on_event(kind, key, action):
        print(f"  {kind:<16} {key} {action}", flush=True)

    steps: list[list[float]] = [[]]
    for m in [m for m in STEP_ORDER if m in plan] + [m for m in multiples if m not in STEP_ORDER]:
        steps.append(steps[-1] + [m])
    record: dict = {"overrides": overrides, "plan": {str(m): {"tokens": t, "multiple": r} for m, (t, r) in plan.items()},
                    "steps": []}
    for i, ms in enumerate(steps):
        budgets = sorted({plan[m][0] for m in ms})
        cfg = config.model_copy(deep=True)
        cfg.fidelity.train_proxies = bool(budgets)
        cfg.fidelity.trained_proxy_budgets = budgets
        label = "merged only" if not budgets else "trained proxies at " + ", ".join(f"{m:g}x" for m in ms)
        print(f"\n=== step {i}: reference models, merged proxies, {label} ===", flush=True)
        result = phase(f"fidelity step {i}", lambda cfg=cfg: run_fidelity(cfg, run_dir, progress=False, device="cpu",
                                                                          on_event=on_event))
        print_step(result, cfg)
        record["steps"].append({"multiples": ms, "budgets": budgets, "summary": [r.to_dict() for r in result.summary],
                                "groups": result.groups, "rules": result.rules,
                                "group_differences": {k: {g: st.to_dict() for g, st in per.items()}
                                                      for k, per in result.group_differences.items()},
                                "baselines": {k: r.to_dict() for k, r in result.baselines.items()}})
        record["timings_s"] = timings
        write_json(run_dir.fidelity / "benchmark-pretrained.json", nan_to_none(record))
    print("timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    return 0


def write_transfer_corpus(path: Path, max_bytes: int) -> None:
    """The transfer corpus (see fidelity_transfer_corpus.py), written once beside the run."""
    from demix.corpora.builtin import _stdlib_files, _stdlib_half

    path.parent.mkdir(parents=True, exist_ok=True)
    total = 0
    with path.open("w", encoding="utf-8") as fh:
        for p in _stdlib_files():
            if _stdlib_half(p) != 1:
                continue
            text = p.read_text(encoding="utf-8", errors="replace")
            if text.strip():
                fh.write(json.dumps({"text": text}) + "\n")
                total += len(text.encode("utf-8"))
            if total >= max_bytes:
                break


def print_step(result, config) -> None:
    """rho per target (capabilities) for every proxy kind and baseline, top-25% rho, CRR; then the
    group table of fidelity_vs_compute.py."""
    kinds = {**result.reports, **result.baselines}
    caps = [n for n, t in next(iter(result.reports.values())).targets.items() if t.capability]
    n = len(result.mixtures)
    print(f"Fidelity against {n} reference models ({config.fidelity.confidence:.0%} bootstrap CI, "
          f"{config.fidelity.bootstrap} resamples)")
    head = "| proxies | " + " | ".join(f"rho {c}" for c in caps) + " | macro rho | top-25% rho | macro CRR |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for kind, rep in kinds.items():
        cells = [fmt_stat(rep.targets[c].spearman) if c in rep.targets else "-" for c in caps]
        m = rep.macro
        print(f"| {kind.replace('_', ' ')} | " + " | ".join(cells)
              + f" | {fmt_stat(m['spearman'])} | {fmt_stat(m['top_spearman'])} | {fmt_stat(m['crr'])} |")
    top_n = next(iter(result.reports.values())).macro["top_spearman"].n
    print(f"(n = {n}; top-25% rho rests on {top_n} points, undefined below 4; CRR on 2**-bits-per-byte)")
    print_groups(result)
    rel = [g["all"].relative for g in result.audit.deltas.values()]
    if rel and not any(math.isnan(x) for x in rel):
        print(f"relative delta ||delta|| / ||base||: {min(rel):.4f}-{max(rel):.4f}")


if __name__ == "__main__":
    raise SystemExit(main())
