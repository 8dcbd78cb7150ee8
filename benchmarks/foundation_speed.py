"""Foundation speed: prepare + base + components of a preset, timed stage by stage.

Runs the stages into a fresh temporary run directory (or --out) and prints one table: per stage
the wall seconds, tokens trained, tokens/s, and held-out loss on the stage's own domain before
and after training. Beside it, the peer measured in the same run: a bare training loop
(forward + backward + AdamW step, nothing else) on the same model, batch and sequence length,
measured right before each training stage (the machine is shared: adjacent measurements keep the
ratio honest), so `ours / bare` is the share of the hardware's training speed the recipe keeps
inside Trainer (data loading, logging, checkpoints and the progress bar included).

    .venv/bin/python benchmarks/foundation_speed.py                 # demo preset
    .venv/bin/python benchmarks/foundation_speed.py --preset full
    .venv/bin/python benchmarks/foundation_speed.py -s train.base.tokens=100000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from demix.configs import load_preset
from demix.packing import PackedTokens, split_prefix
from demix.rundir import RunDir


def bare_loop_tokens_per_second(config, run: RunDir, recipe, steps: int, warmup: int = 2) -> float:
    """Tokens/s of a plain loop on the base's shape: batch from the general train split, the same
    AdamW settings, no Trainer, no data pipeline, no checkpoints."""
    from demix.training import build_model, load_tokenizer

    seq = config.model.seq_len
    model = build_model(config.model, load_tokenizer(run), seed=0)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.95), weight_decay=recipe.weight_decay)
    tokens = PackedTokens(split_prefix(run.data, config.data.general_domain, "train")).tokens
    batch = torch.as_tensor(np.asarray(tokens[: recipe.batch_size * seq], dtype=np.int64).reshape(recipe.batch_size, seq))
    t0 = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return steps * recipe.batch_size * seq / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="demo", choices=["demo", "full"])
    parser.add_argument("--out", type=Path, default=None, help="run directory (default: a temporary one)")
    parser.add_argument("-s", "--set", dest="overrides", action="append", default=[], help="config override key=value")
    parser.add_argument("--bare-steps", type=int, default=8, help="timed steps of the bare loop before each stage")
    args = parser.parse_args()

    from demix.training import train_base, train_component

    out = args.out or Path(tempfile.mkdtemp(prefix="demix_foundation_"))
    config = load_preset(args.preset, [f"output_dir={out}", *args.overrides])
    run = RunDir(config.run_dir)
    m = config.model
    print(
        f"preset {args.preset}: {m.architecture} hidden {m.hidden_size} x {m.num_layers} layers, "
        f"seq {m.seq_len}, vocab {config.tokenizer.vocab_size}, torch threads {torch.get_num_threads()}, run dir {out}"
    )
    rows = []

    t_all = time.perf_counter()
    try:
        from demix.prepare import prepare
    except ImportError:
        prepare = None
    if prepare is not None:
        t0 = time.perf_counter()
        info = prepare(config, run, progress=False)
        tokens = sum(d["splits"]["train"]["tokens"] + d["splits"]["heldout"]["tokens"] for d in info["domains"].values())
        rows.append(("prepare", time.perf_counter() - t0, tokens, None, None, None, None))
    else:
        print("demix.prepare is not available: using an already prepared run directory")

    base = ("base", lambda: train_base(config, run, show_progress=False), config.data.general_domain, config.train.base)
    stages = [base]
    for d in config.data.domain_names:
        fn = lambda d=d: train_component(config, run, d, show_progress=False)  # noqa: E731
        stages.append((f"component {d}", fn, d, config.train.components))
    for name, fn, domain, recipe in stages:
        bare = bare_loop_tokens_per_second(config, run, recipe, args.bare_steps)
        t0 = time.perf_counter()
        result = fn()
        wall = time.perf_counter() - t0
        p = result.provenance
        held = (p.details.get("heldout_loss") or {}).get(domain, {})
        tokens_per_second = p.details.get("tokens_per_second")
        rows.append((name, wall, p.tokens_seen, tokens_per_second, held.get("before"), held.get("after"), bare))
    total = time.perf_counter() - t_all

    def f(x, fmt):
        return "-" if x is None else format(x, fmt)

    header = (
        f"{'stage':<26}{'seconds':>9}{'tokens':>11}{'tok/s wall':>12}{'tok/s train':>13}"
        f"{'bare tok/s':>12}{'ours/bare':>11}{'loss before':>13}{'loss after':>12}"
    )
    print(header)
    print("-" * len(header))
    for name, wall, tokens, train_tps, before, after, bare in rows:
        is_train = train_tps is not None
        print(
            f"{name:<26}{wall:>9.1f}{tokens:>11,}{tokens / wall:>12,.0f}{f(train_tps, ',.0f'):>13}"
            f"{f(bare if is_train else None, ',.0f'):>12}{f(train_tps / bare if is_train else None, '.2f'):>11}"
            f"{f(before, '.3f'):>13}{f(after, '.3f'):>12}"
        )
    print("-" * len(header))
    stages_total = sum(r[1] for r in rows)
    print(f"{'total (stages)':<26}{stages_total:>9.1f}")
    print(f"{'wall incl. bare loops':<26}{total:>9.1f}")
    print(
        "tok/s wall: tokens / stage seconds (load, held-out checks, save included); tok/s train: inside "
        "Trainer.train; bare: forward+backward+AdamW loop on the same model and batch, same process; "
        "losses: nats/token on the stage's own domain, held-out split."
    )


if __name__ == "__main__":
    main()
