"""Shared-context scoring (demix.evaluation.multiple_choice) against the harness's per-request
path: the same requests (lm-eval's own task objects), log-likelihoods to 1e-5, acc / acc_norm
(and acc_mutual_info) exactly, on every shipped log-likelihood task and on tasks that exercise
the harness's corners (delimiters, trailing spaces, unconditional requests, left truncation)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from demix.evaluation import Evaluator
from demix.evaluation.benchmarks import Benchmark
from demix.evaluation.harness import Harness

from .conftest import make_config
from .test_harness import QUESTIONS, write_task

SHIPPED_LL = ("demix_math", "demix_humaneval", "demix_heldout_mc_general", "demix_heldout_mc_math", "demix_heldout_mc_code")

CORNERS_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: "{data}"
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{query}}}} "
doc_to_choice: choices
doc_to_target: "{{{{choices[gold]}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
  - metric: acc_mutual_info
"""

LOGLIKELIHOOD_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: "{data}"
test_split: test
output_type: loglikelihood
doc_to_text: query
doc_to_target: answer
metric_list:
  - metric: perplexity
  - metric: acc
"""


def ll_instances(harness: Harness) -> list:
    """The loglikelihood requests of every task of ``harness``, built by the tasks themselves."""
    out = []
    for name, task in harness.task_dict["tasks"].items():
        task.build_all_requests(samples=harness.samples.get(name), rank=0, world_size=1)
        out += [inst for inst in task.instances if inst.request_type == "loglikelihood"]
    return out


def both_paths(harness: Harness, model) -> tuple[np.ndarray, np.ndarray, list, list]:
    """(shared-context lls, harness lls, their greedy flags) on the same requests and LM object."""
    lm = harness._lm_for(model)
    requests = ll_instances(harness)
    assert requests
    lm.shared_context = True
    fast = lm.loglikelihood(requests)
    assert lm.shared_context_check is True
    lm.shared_context = False
    slow = lm.loglikelihood(requests)
    lm.shared_context = True
    return np.array([f[0] for f in fast]), np.array([s[0] for s in slow]), [f[1] for f in fast], [s[1] for s in slow]


def assert_same(fast, slow, fast_greedy, slow_greedy) -> None:
    np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-5)
    assert fast_greedy == slow_greedy


def shipped_config(run, path: str, **extra):
    return make_config(
        run.root,
        benchmarks=[
            {"name": "arith", "evaluator": "lm_eval", "task": "demix_math", "limit": 40},
            {"name": "humaneval", "evaluator": "lm_eval", "task": "demix_humaneval", "limit": 12},
            *[
                {"name": f"{d}_mc", "evaluator": "lm_eval", "task": f"demix_heldout_mc_{d}", "limit": 12}
                for d in ("general", "math", "code")
            ],
        ],
        lm_eval_path=path,
        **extra,
    )


def test_shipped_tasks_score_like_the_harness(tiny_run, model):
    run, _, _ = tiny_run
    evaluator = Evaluator.from_run(shipped_config(run, "shared_context"), run, "cpu")
    assert set(evaluator.harness.paths) == set(SHIPPED_LL)
    assert all(p == "shared-context" for p in evaluator.harness.paths.values())
    fast, slow, fg, sg = both_paths(evaluator.harness, model)
    assert_same(fast, slow, fg, sg)
    # The metrics are the harness's own (process_results, aggregation): identical values.
    ours = evaluator.evaluate(model)
    theirs = Evaluator.from_run(shipped_config(run, "harness"), run, "cpu").evaluate(model)
    assert ours.benchmarks == theirs.benchmarks
    assert ours.details == theirs.details
    # A different model (weights changed in place) changes the scores on both paths alike.
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.05)
    assert_same(*both_paths(evaluator.harness, model))


def test_corner_cases_score_like_the_harness(tiny_run, model, tmp_path):
    """A context ending in a space (moved into every continuation by HFLM._encode_pair), the
    default " " delimiter, a string target, acc_mutual_info's unconditional ("", choice) requests
    (all sharing the one-token prefix context), and a loglikelihood task (one continuation)."""
    _, tokenizer, _ = tiny_run
    rows = [{"query": q, "choices": [c.strip() for c in choices], "gold": i % len(choices)} for i, (q, choices) in enumerate(QUESTIONS)]
    write_task(tmp_path, "corners", CORNERS_YAML, rows)
    write_task(tmp_path, "ll", LOGLIKELIHOOD_YAML, [{"query": q, "answer": c[0]} for q, c in QUESTIONS])
    benchmarks = [
        Benchmark("a", "lm_eval", "acc", None, task="corners"),
        Benchmark("n", "lm_eval", "acc_norm", None, task="corners"),
        Benchmark("mi", "lm_eval", "acc_mutual_info", None, task="corners"),
        Benchmark("ll", "lm_eval", "perplexity", None, task="ll"),
        Benchmark("greedy", "lm_eval", "acc", None, task="ll"),
    ]
    harness = Harness(benchmarks, [tmp_path], tokenizer, batch_size=3)
    requests = ll_instances(harness)
    assert any(r.args[0] == "" for r in requests)  # the unconditional requests are there
    assert_same(*both_paths(harness, model))
    fast = harness.evaluate(model)[0]
    slow = Harness(benchmarks, [tmp_path], tokenizer, batch_size=3, shared_context=False).evaluate(model)[0]
    assert fast["a"] == slow["a"] and fast["n"] == slow["n"] and fast["mi"] == slow["mi"]
    assert fast["greedy"] == slow["greedy"]
    assert fast["ll"] == pytest.approx(slow["ll"], rel=1e-5)


def test_left_truncation_to_the_model_context_is_the_harness(tiny_run, tmp_path):
    """Contexts longer than the model's 16 positions: the harness keeps the last 17 tokens of
    context + continuation, so choices of different lengths keep different contexts."""
    from helpers.models import tiny_llama

    _, tokenizer, _ = tiny_run
    short = tiny_llama(len(tokenizer), max_positions=16)
    long_query = " ".join(["the river runs quietly and"] * 6)
    rows = [
        {"query": long_query, "choices": [" mountain", " the café and the river", " 城市 → über"], "gold": 1},
        {"query": "naïve", "choices": [" café", " runs"], "gold": 0},
    ]
    write_task(tmp_path, "trunc", QUESTIONS_YAML, rows)
    harness = Harness([Benchmark("t", "lm_eval", "acc", None, task="trunc")], [tmp_path], tokenizer, batch_size=2)
    assert harness._lm_for(short).max_length == 16
    assert len(tokenizer(long_query)["input_ids"]) > 16
    assert_same(*both_paths(harness, short))


QUESTIONS_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: "{data}"
test_split: test
output_type: multiple_choice
doc_to_text: query
doc_to_choice: choices
doc_to_target: gold
target_delimiter: ""
metric_list:
  - metric: acc
"""


def test_packs_share_the_context_and_cut_forward_tokens(tiny_run):
    """One pack per item: the context once, each choice without its last token."""
    from demix.evaluation.multiple_choice import forward_tokens, make_packs, plan_batches

    pairs = [((1, 2, 3, 4), (5, 6)), ((1, 2, 3, 4), (7,)), ((1, 2, 3, 4), (8, 9, 10)), ((9, 9), (1, 2))]
    packs = make_packs(pairs, max_length=64)
    assert [(p.context, p.requests) for p in packs] == [((1, 2, 3, 4), [0, 1, 2]), ((9, 9), [3])]
    assert packs[0].length == 4 + 1 + 0 + 2
    batches = plan_batches(pairs, 64, lambda t: 8, row_tokens=1)
    assert len(batches) == 1 and forward_tokens(batches) == 2 * 7
    b = batches[0]
    assert b.input_ids[0].tolist() == [1, 2, 3, 4, 5, 8, 9]
    assert b.position_ids[0].tolist() == [0, 1, 2, 3, 4, 4, 5]
    assert b.segments[0].tolist() == [0, 0, 0, 0, 1, 3, 3]
    # Scored rows: the last context position (shared by the three choices) and each choice's own.
    assert b.keep[0].tolist() == [3, 4, 5, 6] and b.targets.tolist()[:6] == [5, 6, 7, 8, 9, 10]
    # Short packs share a row (first-fit decreasing), each with its own positions from 0.
    rows = plan_batches(
        [((1, 2, 3, 4, 5, 6), (7, 8)), ((9,), (1, 2)), ((8,), (3, 4)), ((7, 7), (5,))], 64, lambda t: 8, row_tokens=1
    )
    assert len(rows) == 1 and rows[0].input_ids.shape == (2, 7)
    assert rows[0].input_ids[1].tolist() == [9, 1, 8, 3, 7, 7, 0]
    assert rows[0].position_ids[1].tolist() == [0, 1, 0, 1, 0, 1, 0]
    assert rows[0].packs[1].tolist() == [0, 0, 1, 1, 2, 2, -1]
    # Ten packs of 30 tokens fill two rows of 150, not a row of 240 and one padded to it.
    ten = [((100 + i,) * 27, (1, 2, 3, 4)) for i in range(10)]
    assert forward_tokens(plan_batches(ten, 64, lambda t: 8)) == 300
    # Truncation: the harness keeps (ctx + cont)[-(L+1):], so a long choice keeps less context.
    cut = make_packs([((1, 2, 3, 4, 5, 6), (7, 8)), ((1, 2, 3, 4, 5, 6), (7, 8, 9, 10))], max_length=6)
    assert [p.context for p in cut] == [(2, 3, 4, 5, 6), (4, 5, 6)]
    # A group longer than the pack limit is split, each part repeating the context.
    split = make_packs([((1, 2), (3, 4, 5))] * 4, max_length=64, pack_tokens=6)
    assert [p.requests for p in split] == [[0, 1], [2, 3]]


def test_block_mask_keeps_choices_apart():
    from demix.evaluation.multiple_choice import block_mask

    packs = torch.tensor([[0, 0, 0, 0, 0, 1, 1, -1]])
    seg = torch.tensor([[0, 0, 1, 1, 2, 0, 1, 0]])
    allowed = block_mask(packs, seg, torch.float32)[0, 0] == 0
    assert allowed.tolist() == [
        [True, False, False, False, False, False, False, False],
        [True, True, False, False, False, False, False, False],
        [True, True, True, False, False, False, False, False],
        [True, True, True, True, False, False, False, False],
        [True, True, False, False, True, False, False, False],  # choice 2 sees the context, not choice 1
        [False, False, False, False, False, True, False, False],  # the next pack sees nothing before it
        [False, False, False, False, False, True, True, False],
        [False, False, False, False, False, False, False, True],  # padding sees itself only: no NaN row
    ]


def mask_ignoring(model):
    """A copy of ``model`` whose forward drops the attention mask and positions it is given (as
    some custom architectures do): the packed layout then scores wrongly, and the self-check must
    send the requests to the harness."""
    import copy

    from transformers import LlamaForCausalLM

    class MaskIgnoringLlama(LlamaForCausalLM):
        def forward(self, input_ids=None, attention_mask=None, position_ids=None, **kwargs):
            return super().forward(input_ids=input_ids, use_cache=False, logits_to_keep=kwargs.get("logits_to_keep", 0))

    odd = copy.deepcopy(model)
    odd.__class__ = MaskIgnoringLlama
    return odd


def test_a_model_that_ignores_the_mask_falls_back_to_the_harness(tiny_run, model, tmp_path, caplog):
    _, tokenizer, _ = tiny_run
    rows = [{"query": q, "choices": c, "gold": 0} for q, c in QUESTIONS]
    write_task(tmp_path, "qs", QUESTIONS_YAML, rows)
    odd = mask_ignoring(model)
    harness = Harness([Benchmark("q", "lm_eval", "acc", None, task="qs")], [tmp_path], tokenizer, batch_size=4)
    lm = harness._lm_for(odd)
    requests = ll_instances(harness)
    with caplog.at_level(logging.WARNING, logger="demix.evaluation"):
        fast = lm.loglikelihood(requests)
    assert isinstance(lm.shared_context_check, str) and "differs from the harness" in lm.shared_context_check
    assert "falls back to the harness" in caplog.text
    lm.shared_context = False
    assert fast == lm.loglikelihood(requests)


def test_rolling_and_forced_harness_paths_are_named(tiny_run, tmp_path):
    from .test_harness import ROLLING_YAML

    _, tokenizer, heldout = tiny_run
    write_task(tmp_path, "rolling", ROLLING_YAML, [{"text": t} for t in heldout["general"][:2]])
    write_task(tmp_path, "qs", QUESTIONS_YAML, [{"query": q, "choices": c, "gold": 0} for q, c in QUESTIONS])
    benchmarks = [Benchmark("r", "lm_eval", None, None, task="rolling"), Benchmark("q", "lm_eval", "acc", None, task="qs")]
    paths = Harness(benchmarks, [tmp_path], tokenizer).paths
    assert paths == {
        "rolling": "harness (output type loglikelihood_rolling: not a log-likelihood of a continuation)",
        "qs": "shared-context",
    }
    forced = Harness(benchmarks, [tmp_path], tokenizer, shared_context=False).paths
    assert forced["qs"] == "harness (evaluation.lm_eval_path: harness)"


def test_config_switch_forces_the_harness_path(tiny_run):
    run, _, _ = tiny_run
    config = shipped_config(run, "harness")
    assert Evaluator.from_run(config, run, "cpu").harness.shared_context is False
    with pytest.raises(Exception, match="lm_eval_path"):
        shipped_config(run, "fast")


def test_bfloat16_weights_pass_the_self_check_with_fp32_log_softmax(tiny_run, model, tmp_path):
    """bf16 weights: both paths take the log-softmax in fp32; they differ only by the bf16
    forward's order of operations, within the self-check's bf16 tolerance."""
    _, tokenizer, _ = tiny_run
    write_task(tmp_path, "qs", QUESTIONS_YAML, [{"query": q, "choices": c, "gold": 0} for q, c in QUESTIONS])
    harness = Harness([Benchmark("q", "lm_eval", "acc", None, task="qs")], [tmp_path], tokenizer, batch_size=4)
    half = model.to(torch.bfloat16)
    fast, slow, _, _ = both_paths(harness, half)
    assert harness._lm.softmax_dtype == torch.float32
    np.testing.assert_allclose(fast, slow, rtol=3e-2)


@pytest.mark.gpu
def test_shipped_tasks_score_like_the_harness_on_cuda(tiny_run, model):
    run, _, _ = tiny_run
    evaluator = Evaluator.from_run(shipped_config(run, "shared_context"), run, "cuda")
    model = model.to("cuda")
    assert_same(*both_paths(evaluator.harness, model))
    theirs = Evaluator.from_run(shipped_config(run, "harness"), run, "cuda").evaluate(model)
    assert evaluator.evaluate(model).benchmarks == theirs.benchmarks
