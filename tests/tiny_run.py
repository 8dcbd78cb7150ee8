"""A complete tiny run directory for tests that need the whole evaluation path (search with
real merged proxies, executors): tokenizer, packed train/held-out data for three domains, a
random base and three components (base + small deltas). Built from the helpers package, as the
evaluation tests' run; nothing is downloaded or mocked.

    config, run = build_tiny_run(root, rounds=[6, 3])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helpers.models import save_perturbed_copies, tiny_llama
from helpers.tiny_data import DOMAINS, write_tiny_data


def build_tiny_run(root: Path, rounds=(6, 3), delta_scale: float = 0.05, **sections: Any):
    """Write the run under ``root``; returns (RunConfig, RunDir). ``sections`` override config
    sections (e.g. ``executor={"kind": "ray"}``)."""
    import torch

    from demix.config import config_from_dict
    from demix.rundir import RunDir

    run = RunDir(root)
    tokenizer, _ = write_tiny_data(run)
    base = tiny_llama(len(tokenizer))
    base.save_pretrained(run.base)

    def perturb(current: torch.Tensor, start: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        # The delta scales with the mean magnitude of what the parameter holds now, which from
        # the second component on is the previous component's weights.
        return start + delta_scale * current.abs().mean() * torch.randn(current.shape, generator=gen)

    save_perturbed_copies(base, {d: run.component(d) for d in DOMAINS}, perturb)
    data = {
        "output_dir": str(root),
        "data": {"domains": [{"name": d, "source": f"builtin:{d}"} for d in DOMAINS]},
        "model": {"seq_len": 32, "hidden_size": 32, "num_layers": 2, "num_heads": 2},
        "evaluation": {"heldout_tokens": 400, "batch_size": 4, "device": "cpu"},
        "search": {"rounds": list(rounds), "pool_size": 2000, "top_k": 50, "cv_folds": 3},
        **sections,
    }
    return config_from_dict(data), run
