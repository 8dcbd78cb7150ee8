"""Exact gradients of benchmark and capability scores with respect to the component weights.

    g = score_gradients(builder, evaluator, {"general": 0.6, "math": 0.4})
    g.capabilities["math"]          # (K,) d math score / d a, in builder.domains order

Differentiable benchmarks: ``heldout_loss`` (bits per byte and loss per token are the summed
token nll divided by a constant: the scored bytes times ln 2, or the scored tokens). lm-eval
benchmarks are not differentiated here (accuracy is piecewise constant); a capability holding
one is left out of :attr:`ScoreGradient.capabilities` and named in ``not_differentiable``. What
is smooth behind a multiple-choice task is the log-likelihood of its gold choices:
:func:`loglikelihood_gradients` differentiates their sum (the proxy signal for its accuracy).

Units: a benchmark's gradient is of its *score* (the value sign-corrected, higher is better:
``-bits_per_byte``), per unit of component weight. Each held-out domain costs one forward and
one backward pass over its windows (batch by batch, so activation memory is one batch's); the
derivative for every component comes out of the same pass (:mod:`demix.merging.gradient`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from demix.evaluation.benchmarks import Benchmark, Capability

if TYPE_CHECKING:
    from demix.evaluation.evaluator import Evaluator
    from demix.evaluation.heldout import HeldoutLoss
    from demix.merging.builder import ProxyBuilder


def heldout_nll_gradients(
    builder: ProxyBuilder, heldout: HeldoutLoss, mixture: Mapping[str, float], domains: Sequence[str] | None = None
) -> dict[str, tuple[float, np.ndarray]]:
    """Per held-out domain: (sum of the scored targets' nll in nats, its derivative (K,) with
    respect to the component weights) at the proxy of ``mixture``.

    The same tokens, mask and fp32 per-token nll as :meth:`HeldoutLoss.nll_sums` (so the value
    equals the evaluation's); each batch is backpropagated on its own and its contribution to
    ``<grad, delta_i>`` summed in fp64.
    """
    import torch

    from demix.evaluation.heldout import model_device, token_nll
    from demix.merging.gradient import MergeGradient

    model = builder.build(mixture)
    device = model_device(model)
    sets = heldout._sets_on(device)
    wanted = list(domains) if domains is not None else list(sets)
    out: dict[str, tuple[float, np.ndarray]] = {}
    was_training = model.training
    model.eval()
    try:
        with MergeGradient(builder) as mg, torch.enable_grad():
            for name in wanted:
                s = sets[name]
                total = 0.0
                for start in range(0, len(s.inputs), heldout.batch_size):
                    stop = start + heldout.batch_size
                    logits = model(input_ids=s.inputs[start:stop], use_cache=False).logits
                    nll = (token_nll(logits, s.targets[start:stop]) * s.mask[start:stop]).sum()
                    nll.backward()
                    total += float(nll.detach())
                out[name] = (total, mg.take())
    finally:
        model.train(was_training)
    return out


def gold_choice(task: Any, doc: dict[str, Any]) -> int:
    """Index of ``doc``'s gold choice among a multiple-choice task's requests, read as the
    harness's ``process_results`` reads it (``doc_to_target``; ``doc_to_text`` for tasks whose
    choices are contexts; a string target is looked up among the choices)."""
    from demix.errors import DemixError

    choices = task.doc_to_choice(doc)
    gold = task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc)
    if isinstance(gold, str):
        gold = choices.index(gold) if gold in choices else -1
    if not isinstance(gold, int) or not 0 <= gold < len(choices):
        raise DemixError(
            f"lm_eval task '{task.config.task}': document has gold {gold!r}, not one index among its {len(choices)} choices",
            "the log-likelihood gradient needs one gold choice per document (multiple targets are not supported)",
        )
    return gold


def _encode_request(lm: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    # HFLM.loglikelihood's tokenisation: an empty context is the prefix token (BOS/EOS).
    if context:
        return lm._encode_pair(context, continuation)
    cont = lm.tok_encode(continuation, add_special_tokens=False)
    return ([lm.prefix_token_id], cont) if lm.prefix_token_id != cont[0] else (cont[:1], cont[1:])


def gold_requests(harness: Any, task_name: str, lm: Any) -> list[tuple[list[int], list[int]]]:
    """(context tokens, continuation tokens) of the gold choice of every scored document of a
    multiple-choice task (the run's fixed sample subset), tokenised by ``lm``
    (``harness._lm_for(model)``) as the harness does."""
    from demix.errors import DemixError

    task = harness.task_dict["tasks"].get(task_name)
    if task is None or task.OUTPUT_TYPE != "multiple_choice":
        raise DemixError(
            f"lm_eval task '{task_name}' is not a multiple-choice task of this evaluation",
            "differentiate a multiple_choice task (demix_math, demix_humaneval, demix_heldout_mc_<domain>, ...)",
        )
    task.build_all_requests(samples=harness.samples.get(task_name), rank=0, world_size=1)
    gold: dict[int, int] = {}
    out = []
    for inst in task.instances:
        if inst.doc_id not in gold:
            gold[inst.doc_id] = gold_choice(task, inst.doc)
        if inst.idx == gold[inst.doc_id]:
            out.append(_encode_request(lm, *inst.args))
    return out


def loglikelihood_gradients(
    builder: ProxyBuilder, harness: Any, mixture: Mapping[str, float], tasks: Sequence[str]
) -> dict[str, tuple[float, np.ndarray]]:
    """Per multiple-choice lm_eval task: (sum over its scored documents of the gold choice's
    log-likelihood in nats, its derivative (K,) with respect to the component weights) at the
    proxy of ``mixture``.

    The log-likelihoods are the shared-context path's (:mod:`demix.evaluation.multiple_choice`:
    the harness's requests and tokens, fp32 log-softmax), so the value equals the sum of the
    gold choices' scores the evaluation computes; only the gold choice of each document is run.
    Each batch is backpropagated on its own (activation memory is one batch's).
    """
    import torch

    from demix.evaluation.heldout import model_device
    from demix.evaluation.multiple_choice import batch_token_logprobs, plan_batches
    from demix.merging.gradient import MergeGradient

    model = builder.build(mixture)
    lm = harness._lm_for(model)
    out: dict[str, tuple[float, np.ndarray]] = {}
    was_training = model.training
    model.eval()
    try:
        with MergeGradient(builder) as mg, torch.enable_grad():
            for name in tasks:
                pairs = gold_requests(harness, name, lm)
                batches = plan_batches(pairs, lm.max_length, lambda _t: harness.batch_size, model_device(model))
                total = 0.0
                for batch in batches:
                    ll = batch_token_logprobs(model, batch)[0].sum()
                    ll.backward()
                    total += float(ll.detach())
                out[name] = (total, mg.take())
    finally:
        model.train(was_training)
    return out


@dataclass
class ScoreGradient:
    """Scores and their derivatives at one proxy.

    ``benchmarks`` / ``capabilities``: {name: (K,) float64 d score / d component weight}
    (scores higher is better; components in ``domains`` order). ``values``: the differentiated
    benchmarks' raw values (bits per byte, ...) at the proxy; ``capability_scores``: the
    capabilities' scores there. ``seconds``: wall time of the forward and backward passes."""

    domains: list[str]
    values: dict[str, float]
    benchmarks: dict[str, np.ndarray]
    capability_scores: dict[str, float]
    capabilities: dict[str, np.ndarray]
    not_differentiable: list[str] = field(default_factory=list)
    seconds: float = 0.0


def differentiable(benchmark: Benchmark) -> bool:
    """Whether :func:`score_gradients` differentiates ``benchmark`` (held-out loss)."""
    return benchmark.evaluator == "heldout_loss"


def non_differentiable_capabilities(benchmarks: Sequence[Benchmark], capabilities: Sequence[Capability]) -> list[str]:
    """Capabilities holding a benchmark with positive weight that is not differentiable."""
    by_name = {b.name: b for b in benchmarks}
    return [c.name for c in capabilities if any(w > 0 and not differentiable(by_name[n]) for n, w in c.weights.items())]


def score_gradients(builder: ProxyBuilder, evaluator: Evaluator, mixture: Mapping[str, float]) -> ScoreGradient:
    """Derivatives of every differentiable benchmark's score and of every capability made of
    them at the proxy of ``mixture`` (see the module docstring for units)."""
    start = time.perf_counter()
    bench = [b for b in evaluator.benchmarks if differentiable(b)]
    grads: dict[str, tuple[float, np.ndarray]] = {}
    if bench and evaluator.heldout is not None:
        domains = list(dict.fromkeys(b.heldout_domain for b in bench))
        grads = heldout_nll_gradients(builder, evaluator.heldout, mixture, domains)
    values: dict[str, float] = {}
    bgrads: dict[str, np.ndarray] = {}
    for b in bench:
        s = evaluator.heldout.sets[b.heldout_domain] if evaluator.heldout is not None else None
        assert s is not None
        nll, g = grads[b.heldout_domain]
        # metric = nll / scale; score = -metric (losses are lower-is-better).
        scale = math.log(2) * s.bytes if b.metric == "bits_per_byte" else float(s.tokens)
        values[b.name] = nll / scale
        bgrads[b.name] = -g / scale
    skip = non_differentiable_capabilities(evaluator.benchmarks, evaluator.capabilities)
    caps: dict[str, np.ndarray] = {}
    cap_scores: dict[str, float] = {}
    for c in evaluator.capabilities:
        if c.name in skip:
            continue
        caps[c.name] = sum((w * bgrads[n] for n, w in c.weights.items() if w > 0), np.zeros(len(builder.domains)))
        cap_scores[c.name] = float(sum(-w * values[n] for n, w in c.weights.items() if w > 0))
    return ScoreGradient(list(builder.domains), values, bgrads, cap_scores, caps, skip, time.perf_counter() - start)


def as_dict(g: ScoreGradient) -> dict[str, Any]:
    """A JSON-ready view: every gradient keyed by domain."""
    return {
        "benchmarks": {n: dict(zip(g.domains, map(float, v))) for n, v in g.benchmarks.items()},
        "capabilities": {n: dict(zip(g.domains, map(float, v))) for n, v in g.capabilities.items()},
        "not_differentiable": list(g.not_differentiable),
        "seconds": g.seconds,
    }
