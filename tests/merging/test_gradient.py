"""Gradients through the merge (demix.merging.gradient, demix.evaluation.gradient) against
central finite differences of the merged proxy's held-out loss, on the tiny real run (random
Llama base, three components = base + small deltas, packed held-out windows)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from helpers.finite_differences import worst_directional_error
from tiny_run import build_tiny_run

MIX = {"general": 0.5, "math": 0.3, "code": 0.2}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    config, run = build_tiny_run(tmp_path_factory.mktemp("grad") / "run")
    return config, run


def _fp64_reference(config, run, device="cpu"):
    """f(a) = summed nll (nats) of each domain's held-out windows under the EXACT fp64 merge
    base + sum_i a_i (component_i - base): the finite-difference reference."""
    import torch
    from transformers import AutoModelForCausalLM

    from demix.evaluation import Evaluator

    domains = config.data.domain_names
    model = AutoModelForCausalLM.from_pretrained(run.base, dtype=torch.float64).to(device).eval()
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    comps = []
    for d in domains:
        m = AutoModelForCausalLM.from_pretrained(run.component(d), dtype=torch.float64)
        comps.append({k: v.to(device) for k, v in m.state_dict().items()})
    sets = Evaluator.from_run(config, run, device).heldout.sets

    @torch.no_grad()
    def f(a: np.ndarray) -> dict[str, float]:
        merged = {k: base[k] + sum(float(a[i]) * (comps[i][k] - base[k]) for i in range(len(domains))) for k in base}
        model.load_state_dict(merged)
        out = {}
        for name, s in sets.items():
            logits = model(input_ids=s.inputs, use_cache=False).logits.double()
            nll = torch.logsumexp(logits, -1) - logits.gather(-1, s.targets.unsqueeze(-1)).squeeze(-1)
            out[name] = float((nll * s.mask.double()).sum())
        return out

    return f


def _check_against_finite_differences(config, run, device):
    from demix.evaluation import Evaluator
    from demix.evaluation.gradient import heldout_nll_gradients
    from demix.merging import ProxyBuilder

    domains = config.data.domain_names
    builder = ProxyBuilder.from_run(config, run, device)
    evaluator = Evaluator.from_run(config, run, device)
    grads = heldout_nll_gradients(builder, evaluator.heldout, MIX)
    f = _fp64_reference(config, run, device)
    a = np.array([MIX[d] for d in domains])
    # Transformers' Llama computes RMSNorm in fp32 even in an fp64 model, so f carries rounding
    # noise of ~1e-7 relative: a two-point difference at small h drowns in it (h = 1e-3 is off
    # by 1e-3). A least-squares quartic through f(a + t v) at 9 points t in [-0.04, 0.04]
    # averages the noise and cancels the truncation up to t^4; its linear coefficient is f'.
    ts = np.linspace(-0.04, 0.04, 9)
    worst = worst_directional_error(f, a, grads, domains, ts, degree=4)
    # The value the gradient pass reports is the evaluation's (same tokens, same fp32 nll).
    values = evaluator.heldout.nll_sums(builder.build(MIX))
    for name, (nll, _) in grads.items():
        assert math.isclose(nll, values[name], rel_tol=1e-5)
    print(f"{device}: worst relative error of d nll / d a vs fp64 central differences: {worst:.2e}")
    return worst


def test_heldout_gradient_matches_finite_differences(tiny):
    config, run = tiny
    _check_against_finite_differences(config, run, "cpu")


def test_score_gradients_are_of_scores_in_their_units(tiny):
    """bits per byte = nll / (ln 2 bytes); the score is its negation, and a default capability
    (one domain's held-out loss) has its benchmark's gradient. Checked on the fp32 proxy against
    a central difference of the evaluator's own bits per byte (h = 0.05: fp32 rounding of the
    merged weights is below 1e-6 of the difference there)."""
    from demix.evaluation import Evaluator
    from demix.evaluation.gradient import score_gradients
    from demix.merging import ProxyBuilder

    config, run = tiny
    domains = config.data.domain_names
    builder = ProxyBuilder.from_run(config, run, "cpu")
    evaluator = Evaluator.from_run(config, run, "cpu")
    g = score_gradients(builder, evaluator, MIX)
    assert g.not_differentiable == [] and set(g.capabilities) == set(domains)
    at = evaluator.evaluate(builder.build(MIX))
    for name, value in g.values.items():
        assert math.isclose(value, at.benchmarks[name], rel_tol=1e-5)
    h = 0.05
    v = {"general": 1.0, "math": -1.0, "code": 0.0}
    up = evaluator.evaluate(builder.build({d: MIX[d] + h * v[d] for d in domains}))
    down = evaluator.evaluate(builder.build({d: MIX[d] - h * v[d] for d in domains}))
    vec = np.array([v[d] for d in domains])
    for c in domains:
        fd = (up.capabilities[c] - down.capabilities[c]) / (2 * h)
        assert abs(g.capabilities[c] @ vec - fd) <= 0.02 * abs(fd) + 1e-6, c
    # The model is frozen again and holds no gradients: the builder's contract is kept.
    assert all(not p.requires_grad and p.grad is None for p in builder.model.parameters())


def test_gradient_refuses_a_non_linear_merge(tiny):
    from demix.errors import DemixError
    from demix.merging import ProxyBuilder
    from demix.merging.gradient import merge_gradient

    config, run = tiny
    builder = ProxyBuilder.from_run(config, run, "cpu", method="ties", params={"density": 0.5})
    with pytest.raises(DemixError, match="merge.method 'linear'"):
        merge_gradient(builder, MIX, lambda m: None)


@pytest.mark.gpu
def test_heldout_gradient_on_cuda_matches_finite_differences(tiny):
    config, run = tiny
    _check_against_finite_differences(config, run, "cuda")
