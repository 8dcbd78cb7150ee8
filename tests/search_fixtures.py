"""A synthetic scorer with a known optimum and a small config, shared by the search tests."""

from types import SimpleNamespace

import numpy as np

from demix.config import config_from_dict

DOMAINS = ["general", "math", "code"]
TOKENS = {"general": 600, "math": 200, "code": 200}
#: The synthetic capabilities peak near these component weights.
OPTIMUM = {"general": 0.5, "math": 0.3, "code": 0.2}


def synthetic_result(m, noise=0.0, rng=None):
    """Capabilities that are smooth functions of the component weights (peaking at OPTIMUM);
    benchmarks are losses (lower is better)."""
    g, ma, c = m["general"], m["math"], m["code"]
    general = 1 - 4 * (g - 0.5) ** 2
    math = 1 - 6 * (ma - 0.3) ** 2 - 0.5 * (g - 0.5) ** 2
    code = 1 - 6 * (c - 0.2) ** 2
    if noise:
        general, math, code = (x + rng.normal(0, noise) for x in (general, math, code))
    return SimpleNamespace(
        benchmarks={"general_bpb": 2 - general, "math_bpb": 2 - math, "code_bpb": 2 - code},
        capabilities={"general": float(general), "math": float(math), "code": float(code)},
        higher_is_better={"general_bpb": False, "math_bpb": False, "code_bpb": False},
    )


def make_config(run_dir, rounds=(16, 8), **search):
    return config_from_dict(
        {
            "output_dir": str(run_dir),
            "data": {"domains": [{"name": d, "source": "x.jsonl"} for d in DOMAINS]},
            "search": {"rounds": list(rounds), "pool_size": 4000, "top_k": 100, "cv_folds": 3, **search},
        }
    )


def distance(weights, target=OPTIMUM):
    return float(np.abs(np.array([weights[d] - target[d] for d in DOMAINS])).sum())


def golden_search(run_dir):
    """The search behind ``tests/golden/best_mixture_search.json`` (written by demix 0.2: both
    mixtures; ``best_mixture_search_v0.1.json`` is what demix 0.1 wrote for it, component weights
    labelled as token shares): noise-free scorer, document counts on disk, a constraint on natural.
    Returns (config, run, token counts); run it with ``run_search(config, run, synthetic_result, tokens)``."""
    import json

    from demix.rundir import RunDir

    run = RunDir(run_dir)
    for d, n in TOKENS.items():
        run.split_meta(d).parent.mkdir(parents=True, exist_ok=True)
        run.split_meta(d).write_text(json.dumps({"tokens": n, "documents": n // 10}))
    return make_config(run_dir, rounds=(12, 6), constraints=["math >= natural"]), run, TOKENS
