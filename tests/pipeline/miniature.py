"""A miniature run config for the pipeline tests: three domains written as small .jsonl files,
a byte-level BPE of 320 tokens, a 2-layer Llama of width 32, rounds [6, 3] over 2,000 candidates.
A whole `demix run` on it takes well under a minute on 2 CPU cores."""

from __future__ import annotations

import json
import random
from pathlib import Path

import yaml

DOMAINS = ("general", "math", "code")

_WORDS = (
    "the river runs quietly past old mountain towns where people trade bread salt and stories "
    "under a wide sky while children learn songs about rain winter light and the long road home"
).split()


def _documents(domain: str, n: int, seed: int = 0) -> list[str]:
    rng = random.Random(f"{domain}:{seed}")
    docs = []
    for _ in range(n):
        if domain == "general":
            docs.append(" ".join(rng.choice(_WORDS) for _ in range(rng.randint(40, 80))) + ".")
        elif domain == "math":
            parts = []
            for _ in range(rng.randint(6, 12)):
                a, b = rng.randint(1, 99), rng.randint(1, 99)
                parts.append(f"{a} + {b} = {a + b}; {a} * {b} = {a * b}.")
            docs.append(" ".join(parts))
        else:
            name = rng.choice(["add", "scale", "shift", "total", "count"])
            body = "\n".join(f"    x = x {rng.choice('+-*')} {rng.randint(1, 9)}" for _ in range(rng.randint(4, 10)))
            docs.append(f"def {name}(x):\n{body}\n    return x\n")
    return docs


def write_miniature(root: Path, output_dir: Path | None = None, **search: object) -> Path:
    """Write the domain files and ``demix.yaml`` under ``root``; returns the config path."""
    root.mkdir(parents=True, exist_ok=True)
    domains = []
    for d in DOMAINS:
        path = root / f"{d}.jsonl"
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in _documents(d, 220)))
        domains.append({"name": d, "source": str(path), "license": "CC0-1.0 (generated)"})
    config = {
        "name": "miniature",
        "output_dir": str(output_dir or root / "run"),
        "data": {"domains": domains, "general_domain": "general", "heldout_fraction": 0.1},
        "tokenizer": {"vocab_size": 320, "max_train_bytes": 200_000},
        "model": {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "seq_len": 32},
        "train": {
            "base": {"tokens": 30 * 8 * 32, "lr": 0.01, "batch_size": 8, "warmup_fraction": 0.1, "save_every_steps": 10},
            "components": {"tokens": 15 * 8 * 32, "lr": 0.003, "batch_size": 8, "save_every_steps": 5},
            "device": "cpu",
            "heldout_tokens": 512,
        },
        "evaluation": {"heldout_tokens": 1024, "batch_size": 16, "device": "cpu"},
        "search": {"rounds": [6, 3], "pool_size": 2000, "top_k": 50, "cv_folds": 3, **search},
        "fidelity": {"num_references": 0},
    }
    path = root / "demix.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
