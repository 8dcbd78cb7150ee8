"""Benchmarks and capabilities from the config: defaults, sign conventions, aggregation, bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest

from demix.errors import DemixError
from demix.evaluation import (
    EvalResult,
    aggregate_capabilities,
    resolve_benchmarks,
    resolve_capabilities,
    sign_correct,
)

from .conftest import make_config


def test_defaults_one_heldout_benchmark_and_capability_per_domain(tmp_path):
    config = make_config(tmp_path)
    benchmarks = resolve_benchmarks(config)
    assert [b.name for b in benchmarks] == ["heldout:general", "heldout:math", "heldout:code"]
    assert all(b.metric == "bits_per_byte" and b.higher_is_better is False for b in benchmarks)
    caps = resolve_capabilities(config)
    assert {c.name: c.weights for c in caps} == {
        "general": {"heldout:general": 1.0},
        "math": {"heldout:math": 1.0},
        "code": {"heldout:code": 1.0},
    }


def test_default_capabilities_group_by_domain_and_lm_eval_benchmarks_stand_alone(tmp_path):
    config = make_config(
        tmp_path,
        benchmarks=[
            {"name": "m_bpb", "domain": "math"},
            {"name": "m_tok", "domain": "math", "metric": "loss_per_token"},
            {"name": "arith", "evaluator": "lm_eval", "task": "demix_math"},
        ],
    )
    caps = {c.name: c.weights for c in resolve_capabilities(config)}
    assert caps == {"math": {"m_bpb": 0.5, "m_tok": 0.5}, "arith": {"arith": 1.0}}


def test_sign_conventions_and_weighted_aggregation(tmp_path):
    config = make_config(
        tmp_path,
        benchmarks=[
            {"name": "bpb", "domain": "math"},
            {"name": "acc", "evaluator": "lm_eval", "task": "demix_math", "higher_is_better": True},
        ],
        capabilities=[{"name": "math", "benchmarks": {"bpb": 1, "acc": 3}}],
    )
    (cap,) = resolve_capabilities(config)
    assert cap.weights == {"bpb": 0.25, "acc": 0.75}
    values = {"bpb": 2.0, "acc": 0.4}
    directions = {"bpb": False, "acc": True}
    assert aggregate_capabilities(values, directions, [cap]) == {"math": pytest.approx(0.25 * -2.0 + 0.75 * 0.4)}
    # Lower bits per byte must rank higher: a better model gets a higher capability score.
    better = aggregate_capabilities({"bpb": 1.5, "acc": 0.4}, directions, [cap])["math"]
    assert better > aggregate_capabilities(values, directions, [cap])["math"]
    assert sign_correct(2.0, False) == -2.0 and sign_correct(0.4, True) == 0.4
    result = EvalResult(values, {"math": 0.0}, directions)
    assert result.scores() == {"bpb": -2.0, "acc": 0.4}
    assert set(result.to_dict()) >= {"benchmarks", "capabilities", "higher_is_better"}


@pytest.mark.parametrize(
    "evaluation, message",
    [
        ({"benchmarks": [{"name": "x", "domain": "poetry"}]}, "unknown domain 'poetry'"),
        ({"benchmarks": [{"name": "x", "domain": "math", "metric": "acc"}]}, "unknown metric 'acc'"),
        ({"benchmarks": [{"name": "x"}]}, "names no domain"),
        ({"benchmarks": [{"name": "x", "domain": "math", "higher_is_better": True}]}, "is a loss"),
        ({"benchmarks": [{"name": "x", "evaluator": "lm_eval"}]}, "names no task"),
        ({"benchmarks": [{"name": "x", "domain": "math"}, {"name": "x", "domain": "code"}]}, "defined twice"),
        (
            {"benchmarks": [{"name": "x", "domain": "math"}], "capabilities": [{"name": "c", "benchmarks": {"y": 1}}]},
            r"unknown benchmark\(s\) \['y'\]",
        ),
        (
            {"benchmarks": [{"name": "x", "domain": "math"}], "capabilities": [{"name": "c", "benchmarks": {"x": 0}}]},
            "invalid weights",
        ),
        (
            {"benchmarks": [{"name": "x", "domain": "math"}], "capabilities": [{"name": "c", "benchmarks": {"x": -1}}]},
            "invalid weights",
        ),
    ],
)
def test_bad_benchmarks_and_capabilities_are_clear_errors(tmp_path, evaluation, message):
    config = make_config(tmp_path, **evaluation)
    with pytest.raises(DemixError, match=message):
        resolve_capabilities(config)


def test_aggregation_refuses_a_missing_benchmark(tmp_path):
    (cap,) = resolve_capabilities(make_config(tmp_path, benchmarks=[{"name": "x", "domain": "math"}]))
    with pytest.raises(DemixError, match=r"needs benchmark\(s\) \['x'\]"):
        aggregate_capabilities({}, {}, [cap])


def test_importing_the_pure_part_stays_light():
    code = "import sys, demix.evaluation; print('torch' in sys.modules, 'lm_eval' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
