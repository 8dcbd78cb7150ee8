"""Screening (demix.evaluation.screening): nested fixed subsets, screened results that say which
documents they used, and the successive-halving selection."""

from __future__ import annotations

import math

import pytest

from demix.errors import DemixError
from demix.evaluation import Evaluator
from demix.evaluation.screening import screen, screening_samples, survivors

from .conftest import make_config


def test_screening_subsets_are_nested_and_recorded(tiny_run, model):
    run, _, _ = tiny_run
    config = make_config(
        run.root,
        benchmarks=[
            {"name": "arith", "evaluator": "lm_eval", "task": "demix_math", "limit": 40},
            {"name": "general_mc", "evaluator": "lm_eval", "task": "demix_heldout_mc_general"},
            {"name": "heldout:math", "domain": "math"},
        ],
    )
    evaluator = Evaluator.from_run(config, run, "cpu")
    harness = evaluator.harness
    subsets = screening_samples(harness, 0.25)
    assert len(subsets["demix_math"]) == 10 and set(subsets["demix_math"]) <= set(harness.samples["demix_math"])
    n_general = len(harness.task_dict["tasks"]["demix_heldout_mc_general"].eval_docs)
    assert len(subsets["demix_heldout_mc_general"]) == math.ceil(0.25 * n_general)
    assert screening_samples(harness, 0.25) == subsets  # fixed: the same for every proxy
    assert set(screening_samples(harness, 0.1)["demix_math"]) <= set(subsets["demix_math"])
    screened = screen(evaluator, model, subsets)
    full = evaluator.evaluate(model)
    assert screened.details["arith"]["screened"] == {"documents": subsets["demix_math"], "of": 40}
    assert screened.details["arith"]["samples"] == 10 and full.details["arith"]["samples"] == 40
    assert "screened" not in full.details["arith"]
    assert screened.benchmarks["heldout:math"] == full.benchmarks["heldout:math"]  # held-out: in full
    # The subset's accuracy is the full set's accuracy on those documents: a mean of 10 of its 0/1 items.
    assert screened.benchmarks["arith"] * 10 == pytest.approx(round(screened.benchmarks["arith"] * 10))
    with pytest.raises(DemixError, match="screening fraction"):
        screening_samples(harness, 0.0)


def test_survivors_keep_the_best_half_and_the_near_ties():
    assert survivors([0.1, 0.5, 0.3, 0.2], keep=0.5) == [1, 2]
    assert survivors([0.1, 0.5, 0.3, 0.49], keep=0.25, margin=0.02) == [1, 3]
    assert survivors([float("nan"), 0.2, 0.1], keep=0.3) == [1]
    assert survivors([float("nan")], keep=0.5) == [0]
    assert survivors([], keep=0.5) == []
    with pytest.raises(DemixError, match="keep"):
        survivors([1.0], keep=0)
    with pytest.raises(DemixError, match="margin"):
        survivors([1.0], margin=-1)
