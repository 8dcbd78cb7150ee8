"""d (sum of the gold choices' log-likelihoods of a multiple-choice task) / d component weights
(demix.evaluation.gradient.loglikelihood_gradients) against finite differences of the merged
proxy's score, on the tiny real run (random Llama base, three components = base + small deltas)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from helpers.finite_differences import worst_directional_error
from tiny_run import build_tiny_run

MIX = {"general": 0.5, "math": 0.3, "code": 0.2}
TASKS = ("demix_math", "demix_heldout_mc_general")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    config, run = build_tiny_run(tmp_path_factory.mktemp("llgrad") / "run")
    data = config.model_dump()
    data["evaluation"]["benchmarks"] = [
        {"name": "arith", "evaluator": "lm_eval", "task": "demix_math", "limit": 12},
        {"name": "general_mc", "evaluator": "lm_eval", "task": "demix_heldout_mc_general", "limit": 8},
    ]
    from demix.config import config_from_dict

    return config_from_dict(data), run


def _fp64_reference(config, run, pairs_by_task, max_length):
    """f(a) = summed gold log-likelihood (nats) per task under the EXACT fp64 merge, each request
    run on its own as the harness runs it: ``(context + continuation)[-(L+1):][:-1]``."""
    import torch
    from transformers import AutoModelForCausalLM

    domains = config.data.domain_names
    model = AutoModelForCausalLM.from_pretrained(run.base, dtype=torch.float64).eval()
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    comps = [AutoModelForCausalLM.from_pretrained(run.component(d), dtype=torch.float64).state_dict() for d in domains]

    @torch.no_grad()
    def f(a: np.ndarray) -> dict[str, float]:
        merged = {k: base[k] + sum(float(a[i]) * (comps[i][k] - base[k]) for i in range(len(domains))) for k in base}
        model.load_state_dict(merged)
        out = {}
        for name, pairs in pairs_by_task.items():
            total = 0.0
            for ctx, cont in pairs:
                ids = torch.tensor([(list(ctx) + list(cont))[-(max_length + 1) :][:-1]])
                logp = torch.log_softmax(model(input_ids=ids, use_cache=False).logits[0].double(), -1)
                rows = logp[-len(cont) :]
                total += float(rows[torch.arange(len(cont)), torch.tensor(cont)].sum())
            out[name] = total
        return out

    return f


def test_loglikelihood_gradient_matches_finite_differences(tiny):
    from demix.evaluation import Evaluator
    from demix.evaluation.gradient import gold_requests, loglikelihood_gradients
    from demix.merging import ProxyBuilder

    config, run = tiny
    domains = config.data.domain_names
    builder = ProxyBuilder.from_run(config, run, "cpu")
    evaluator = Evaluator.from_run(config, run, "cpu")
    harness = evaluator.harness
    grads = loglikelihood_gradients(builder, harness, MIX, TASKS)
    assert set(grads) == set(TASKS)
    pairs = {t: gold_requests(harness, t, harness._lm) for t in TASKS}
    assert len(pairs["demix_math"]) == 12 and len(pairs["demix_heldout_mc_general"]) == 8
    f = _fp64_reference(config, run, pairs, harness._lm.max_length)
    a = np.array([MIX[d] for d in domains])
    # As for the held-out gradient (tests/merging/test_gradient.py): the fp64 model still rounds
    # RMSNorm in fp32, so f carries ~1e-7 relative noise and a least-squares polynomial gives f'.
    # Here f is ~500 nats and one direction's derivative is only ~0.2 (math - code on demix_math):
    # a quartic over [-0.04, 0.04] is off by ~1e-3 there from the noise alone; a degree-6 fit
    # over 13 steps in [-0.1, 0.1] averages more of it (its truncation is O(t^7)).
    ts = np.linspace(-0.1, 0.1, 13)
    worst = worst_directional_error(f, a, grads, domains, ts, degree=6)
    print(f"worst relative error of d gold-ll / d a vs fp64 central differences: {worst:.2e}")
    # The value is the evaluation's: the harness's own per-request log-likelihoods of the gold choices.
    lm = harness._lm_for(builder.build(MIX))
    lm.shared_context = False
    for name, (value, _) in grads.items():
        task = harness.task_dict["tasks"][name]
        from demix.evaluation.gradient import gold_choice

        gold = [inst for inst in task.instances if inst.idx == gold_choice(task, inst.doc)]
        theirs = sum(ll for ll, _ in lm.loglikelihood(gold))
        assert math.isclose(value, theirs, rel_tol=1e-5)
    assert all(not p.requires_grad and p.grad is None for p in builder.model.parameters())


def test_gradient_of_a_task_that_is_not_multiple_choice_is_a_clear_error(tiny, tmp_path):
    from demix.errors import DemixError
    from demix.evaluation import Evaluator
    from demix.evaluation.gradient import loglikelihood_gradients
    from demix.merging import ProxyBuilder

    config, run = tiny
    builder = ProxyBuilder.from_run(config, run, "cpu")
    harness = Evaluator.from_run(config, run, "cpu").harness
    with pytest.raises(DemixError, match="'demix_humaneval_bpb' is not a multiple-choice task"):
        loglikelihood_gradients(builder, harness, MIX, ["demix_humaneval_bpb"])
