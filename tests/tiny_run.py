"""A complete tiny run directory for tests that need the whole evaluation path (search with
real merged proxies, executors): tokenizer, packed train/held-out data for three domains, a
random base and three components (base + small deltas). Built from the evaluation tests'
helpers; nothing is downloaded or mocked.

    config, run = build_tiny_run(root, rounds=[6, 3])
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from evaluation.conftest import DOMAINS, domain_documents, pack, tiny_llama, train_tokenizer  # noqa: E402


def build_tiny_run(root: Path, rounds=(6, 3), delta_scale: float = 0.05, **sections):
    """Write the run under ``root``; returns (RunConfig, RunDir). ``sections`` override config
    sections (e.g. ``executor={"kind": "ray"}``)."""
    import torch

    from demix.config import config_from_dict
    from demix.rundir import RunDir

    run = RunDir(root)
    texts = {d: domain_documents(d, 40, seed=0) for d in DOMAINS}
    tokenizer = train_tokenizer([t for docs in texts.values() for t in docs])
    tokenizer.save_pretrained(str(run.tokenizer))
    for d in DOMAINS:
        pack(run.data / d / "heldout", tokenizer, domain_documents(d, 12, seed=1))
        pack(run.data / d / "train", tokenizer, texts[d])
    base = tiny_llama(len(tokenizer))
    base.save_pretrained(run.base)
    start = {k: v.clone() for k, v in base.state_dict().items()}
    for i, d in enumerate(DOMAINS):
        gen = torch.Generator().manual_seed(100 + i)
        with torch.no_grad():
            for name, p in base.named_parameters():
                p.copy_(start[name] + delta_scale * p.abs().mean() * torch.randn(p.shape, generator=gen))
        base.save_pretrained(run.component(d))
    data = {
        "output_dir": str(root),
        "data": {"domains": [{"name": d, "source": f"builtin:{d}"} for d in DOMAINS]},
        "model": {"seq_len": 32, "hidden_size": 32, "num_layers": 2, "num_heads": 2},
        "evaluation": {"heldout_tokens": 400, "batch_size": 4, "device": "cpu"},
        "search": {"rounds": list(rounds), "pool_size": 2000, "top_k": 50, "cv_folds": 3},
        **sections,
    }
    return config_from_dict(data), run
