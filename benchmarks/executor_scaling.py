"""Proxy evaluations per minute: the local executor, and Ray with 1 and 2 actors (or one per GPU),
with ideal linear scaling (workers x the 1-actor rate) beside it.

    .venv/bin/python benchmarks/executor_scaling.py [--mixtures 24] [--heldout-tokens 4000] [--gpus]

Builds a tiny real run (tokenizer, packed data, a random Llama base and 3 components) in a temp
dir; each evaluation merges the proxy into the actor's resident model and scores held-out loss
on 3 domains. Rates exclude actor start-up (measured separately). On a machine with N cores, 2
CPU actors can reach at most min(2, N) x the 1-actor rate; other jobs on the machine lower it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
# The test helpers build the tiny run; tests/ is not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from demix.executors import LocalExecutor, ProxyScorerFactory  # noqa: E402
from demix.sampling import sample_mixtures  # noqa: E402
from tiny_run import build_tiny_run  # noqa: E402


def mixtures(domains, n):
    import numpy as np

    from demix.config import BoundsConfig, SamplerConfig
    from demix.mixtures import rows_to_mixtures
    from demix.sampling import resolve_bounds

    bounds = resolve_bounds(domains, BoundsConfig(), None, None)
    rows = sample_mixtures(domains, n, np.full(len(domains), 1 / len(domains)), SamplerConfig(), bounds, np.random.default_rng(0))
    return rows_to_mixtures(domains, rows)


def rate(executor, items) -> tuple[float, int]:
    got = []
    t0 = time.perf_counter()
    executor.evaluate(iter(list(enumerate(items))), lambda i, m, r: got.append(i))
    seconds = time.perf_counter() - t0
    assert sorted(got) == list(range(len(items)))
    return 60 * len(items) / seconds, len(items)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mixtures", type=int, default=24)
    ap.add_argument("--heldout-tokens", type=int, default=4000)
    ap.add_argument("--gpus", action="store_true", help="one Ray actor per GPU (num_gpus=1, device cuda)")
    args = ap.parse_args()

    import ray
    import torch

    from demix.executors.ray_executor import RayExecutor

    root = Path(tempfile.mkdtemp(prefix="demix-bench-")) / "run"
    config, run = build_tiny_run(root, evaluation={"heldout_tokens": args.heldout_tokens, "batch_size": 8, "device": "cpu"})
    items = mixtures(config.data.domain_names, args.mixtures)
    device = "cuda" if args.gpus else "cpu"
    factory = ProxyScorerFactory.from_run(config, run, device)

    rows = []
    local = LocalExecutor(factory())
    local.evaluate(iter([(0, items[0])]), lambda *a: None)  # warm-up
    r, n = rate(local, items)
    rows.append(("local (in process)", 1, r, None))

    gpus = torch.cuda.device_count() if args.gpus else 0
    cpus = os.cpu_count() or 1
    ray.init(num_cpus=max(2, cpus), include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    counts = [1, 2] if not args.gpus else sorted({1, gpus})
    one = None
    for workers in counts:
        t0 = time.perf_counter()
        ex = RayExecutor(factory, num_workers=workers, num_cpus=1, num_gpus=1 if args.gpus else 0)
        startup = time.perf_counter() - t0
        rate(ex, items[: 2 * workers])  # warm-up every actor
        r, _ = rate(ex, items)
        ex.close()
        one = one or r
        rows.append((f"ray, {workers} actor(s) ({device})", workers, r, startup))
    ray.shutdown()

    print(f"\nproxy evaluations per minute ({args.mixtures} mixtures, {args.heldout_tokens} held-out tokens x 3 domains, "
          f"{cpus} CPU cores, {gpus} GPUs)")
    print(f"{'executor':<28} {'workers':>7} {'evals/min':>10} {'ideal':>10} {'of ideal':>9} {'start-up s':>11}")
    for name, workers, r, startup in rows:
        ideal = one * workers if name.startswith("ray") else None
        frac = f"{r / ideal:.0%}" if ideal else "-"
        print(f"{name:<28} {workers:>7} {r:>10.1f} {ideal or r:>10.1f} {frac:>9} {'-' if startup is None else f'{startup:.1f}':>11}")
    print("ideal = workers x the 1-actor Ray rate (linear scaling)")


if __name__ == "__main__":
    main()
