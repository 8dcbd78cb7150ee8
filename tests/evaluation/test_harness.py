"""lm-eval path: same ranking as a direct log-likelihood, no stale results, shipped tasks, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from demix.errors import DemixError
from demix.evaluation import Evaluator
from demix.evaluation.benchmarks import Benchmark
from demix.evaluation.harness import Harness

from .conftest import make_config

MC_YAML = """task: {name}
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
  - metric: acc_norm
"""

ROLLING_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: "{data}"
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: text
metric_list:
  - metric: bits_per_byte
"""


def write_task(folder: Path, name: str, template: str, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / f"{name}.yaml").write_text(template.format(name=name, data=data))


def direct_loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    # The test's texts are cut at a space, so the pair tokenises like the whole string.
    assert ctx + cont == tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
    targets = ids[0, 1:]
    return float(logp[torch.arange(len(targets)), targets][len(ctx) - 1 :].sum())


QUESTIONS = [
    ("the river runs", [" quietly and", " über the", " 城市 mountain", " and the café"]),
    ("12 + 7 =", [" 19;", " 84.", " 3 * 4", " the river"]),
    ("def add(x):", [" return x", " x = x + 1", " mountain", " 7 + 8 = 15"]),
    ("naïve café", [" über-fast", " runs quietly", " → and", " 1 + 1 = 2."]),
    ("mountain →", [" the", " 城市", " def", " 99"]),
]


def test_harness_ranks_choices_like_a_direct_loglikelihood(tiny_run, model, tmp_path):
    run, tokenizer, _ = tiny_run
    lls = [[direct_loglikelihood(model, tokenizer, q, c) for c in choices] for q, choices in QUESTIONS]
    best = [max(range(len(v)), key=v.__getitem__) for v in lls]
    worst = [min(range(len(v)), key=v.__getitem__) for v in lls]
    assert best != worst
    def rows(gold):
        return [{"query": q, "choices": c, "gold": g} for (q, c), g in zip(QUESTIONS, gold)]

    write_task(tmp_path, "mc_best", MC_YAML, rows(best))
    write_task(tmp_path, "mc_worst", MC_YAML, rows(worst))
    benchmarks = [
        Benchmark("best", "lm_eval", "acc", None, task="mc_best"),
        Benchmark("worst", "lm_eval", "acc", None, task="mc_worst"),
    ]
    harness = Harness(benchmarks, [tmp_path], tokenizer, batch_size=4)
    values, details = harness.evaluate(model)
    assert values == {"best": 1.0, "worst": 0.0}
    assert details["best"]["samples"] == len(QUESTIONS)
    assert all(b.higher_is_better for b in harness.benchmarks)  # read from the task


def test_harness_never_returns_stale_results(tiny_run, model, tmp_path):
    run, tokenizer, heldout = tiny_run
    write_task(tmp_path, "rolling", ROLLING_YAML, [{"text": t} for t in heldout["general"][:4]])
    harness = Harness([Benchmark("bpb", "lm_eval", None, None, task="rolling")], [tmp_path], tokenizer)
    assert harness.benchmarks[0].metric == "bits_per_byte"
    assert harness.benchmarks[0].higher_is_better is False
    first = harness.evaluate(model)[0]["bpb"]
    assert harness.evaluate(model)[0]["bpb"] == first
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.1)
    changed = harness.evaluate(model)[0]["bpb"]
    assert changed != first
    with torch.no_grad():
        for p in model.parameters():
            p.div_(1.1)
    assert harness.evaluate(model)[0]["bpb"] == pytest.approx(first, rel=1e-6)


def test_shipped_tasks_run_on_a_fixed_subset(tiny_run, model):
    run, _, _ = tiny_run
    config = make_config(
        run.root,
        benchmarks=[
            {"name": "heldout:math", "domain": "math"},
            {"name": "math_mc", "evaluator": "lm_eval", "task": "demix_math", "limit": 10},
            {"name": "code_mc", "evaluator": "lm_eval", "task": "demix_humaneval", "limit": 4},
            {"name": "code_bpb", "evaluator": "lm_eval", "task": "demix_humaneval_bpb", "limit": 2},
            {"name": "general_mc", "evaluator": "lm_eval", "task": "demix_heldout_mc_general", "limit": 6},
        ],
        capabilities=[
            {"name": "math", "benchmarks": {"heldout:math": 1, "math_mc": 1}},
            {"name": "code", "benchmarks": {"code_mc": 1, "code_bpb": 1}},
            {"name": "general", "benchmarks": {"general_mc": 1}},
        ],
    )
    evaluator = Evaluator.from_run(config, run, "cpu")
    for task in ("demix_math", "demix_humaneval", "demix_humaneval_bpb", "demix_heldout_mc_general"):
        assert (run.eval_tasks / f"{task}.yaml").is_file()
    first = evaluator.evaluate(model)
    assert first.metrics == {
        "heldout:math": "bits_per_byte",
        "math_mc": "acc",
        "code_mc": "acc_norm",
        "code_bpb": "bits_per_byte",
        "general_mc": "acc",
    }
    assert first.higher_is_better == {
        "heldout:math": False, "math_mc": True, "code_mc": True, "code_bpb": False, "general_mc": True,
    }
    assert first.details["math_mc"]["samples"] == 10
    assert first.details["code_mc"]["samples"] == 4
    assert first.details["general_mc"]["samples"] == 6
    for name in ("math_mc", "code_mc", "general_mc"):
        assert 0.0 <= first.benchmarks[name] <= 1.0
    assert first.benchmarks["code_bpb"] > 0
    b = first.benchmarks
    assert first.capabilities["code"] == pytest.approx(0.5 * b["code_mc"] - 0.5 * b["code_bpb"])
    assert first.capabilities["math"] == pytest.approx(-0.5 * b["heldout:math"] + 0.5 * b["math_mc"])
    # The same proxy again: identical; the subset and the prompts are fixed.
    again = evaluator.evaluate(model)
    assert again.benchmarks == first.benchmarks


def test_heldout_mc_items_are_real_continuations(tiny_run):
    from demix.evaluation.local_tasks import heldout_mc_items
    from demix.packing import PackedTokens

    run, tokenizer, heldout = tiny_run
    items = heldout_mc_items(PackedTokens(run.data / "general" / "heldout"), tokenizer, seed=0)
    assert len(items) >= 10
    joined = "\n".join(heldout["general"])
    for item in items:
        assert len(item["choices"]) == 4 and len(set(item["choices"])) == 4
        assert item["query"] + item["choices"][item["gold"]] in joined
        assert all(c.startswith(" ") for c in item["choices"])


def test_math_items_are_deterministic_and_correct():
    from demix.evaluation.local_tasks import math_items

    items = math_items(seed=3)
    assert items == math_items(seed=3)
    assert items != math_items(seed=4)
    for item in items[:50]:
        q = item["query"].removeprefix("Question: ").removesuffix("\nAnswer:")
        answer = int(item["choices"][item["gold"]])
        if q.startswith("What is"):
            assert eval(q.removeprefix("What is ").rstrip("?")) == answer  # our own generated arithmetic
        else:
            lhs, rhs = q.removeprefix("Solve for x: ").split(". ")[0].split(" = ")
            assert eval(lhs.replace("x", f"({answer})")) == int(rhs)


def test_task_file_that_does_not_parse_names_the_file(tiny_run, tmp_path):
    _, tokenizer, _ = tiny_run
    (tmp_path / "broken.yaml").write_text("task: demo\ndataset_kwargs: [unclosed\n")
    with pytest.raises(DemixError, match="broken.yaml' does not parse"):
        Harness([Benchmark("b", "lm_eval", None, None, task="demo")], [tmp_path], tokenizer)
    (tmp_path / "broken.yaml").write_text("- just\n- a list\n")
    with pytest.raises(DemixError, match="broken.yaml' does not parse"):
        Harness([Benchmark("b", "lm_eval", None, None, task="demo")], [tmp_path], tokenizer)


def test_unknown_task_metric_or_directory_is_a_clear_error(tiny_run, tmp_path):
    _, tokenizer, heldout = tiny_run
    write_task(tmp_path, "rolling", ROLLING_YAML, [{"text": t} for t in heldout["general"][:2]])
    with pytest.raises(DemixError, match=r"task\(s\) \['hellaswag'\] not found"):
        Harness([Benchmark("b", "lm_eval", None, None, task="hellaswag")], [tmp_path], tokenizer)
    with pytest.raises(DemixError, match="unknown metric 'acc' of lm_eval task 'rolling'"):
        Harness([Benchmark("b", "lm_eval", "acc", None, task="rolling")], [tmp_path], tokenizer)
    with pytest.raises(DemixError, match="does not exist"):
        Harness([Benchmark("b", "lm_eval", None, None, task="rolling")], [tmp_path / "nope"], tokenizer)


def test_heldout_mc_of_unknown_domain_is_a_clear_error(tiny_run):
    run, _, _ = tiny_run
    config = make_config(run.root, benchmarks=[{"name": "x", "evaluator": "lm_eval", "task": "demix_heldout_mc_poetry"}])
    with pytest.raises(DemixError, match="domain 'poetry', which is not a domain of the run"):
        Evaluator.from_run(config, run, "cpu")


def test_task_with_missing_data_file_is_a_clear_error(tiny_run, tmp_path):
    _, tokenizer, _ = tiny_run
    (tmp_path / "nodata.yaml").write_text(ROLLING_YAML.format(name="nodata", data=tmp_path / "missing.jsonl"))
    with pytest.raises(DemixError, match=r"could not load task\(s\) \['nodata'\]"):
        Harness([Benchmark("b", "lm_eval", None, None, task="nodata")], [tmp_path], tokenizer)


def test_answer_longer_than_the_context_is_a_clear_error(tiny_run, tmp_path):
    """The harness itself only asserts; demix names the task and what to change."""
    from helpers.models import tiny_llama

    run, tokenizer, _ = tiny_run
    short_context = tiny_llama(len(tokenizer), max_positions=16).eval()
    long_answer = " the river runs quietly" * 20
    write_task(tmp_path, "long_mc", MC_YAML, [{"query": "the river", "choices": [long_answer, " and"], "gold": 0}])
    harness = Harness([Benchmark("long", "lm_eval", "acc", None, task="long_mc")], [tmp_path], tokenizer)
    with pytest.raises(DemixError) as exc:
        harness.evaluate(short_context)
    assert "long_mc" in exc.value.what and "16 tokens" in exc.value.what and "model.seq_len" in exc.value.fix


def test_shipped_humaneval_keeps_only_answers_that_fit_the_context(tiny_run, tmp_path):
    from demix.evaluation.local_tasks import materialize_tasks

    run, tokenizer, _ = tiny_run
    def rows(d):
        return [json.loads(line) for line in (d / "data" / "demix_humaneval.jsonl").read_text().splitlines()]

    materialize_tasks(tmp_path / "all", ["demix_humaneval"], tokenizer=tokenizer)
    assert len(rows(tmp_path / "all")) == 164
    materialize_tasks(tmp_path / "fit", ["demix_humaneval"], tokenizer=tokenizer, max_answer_tokens=96)
    kept = rows(tmp_path / "fit")
    assert 0 < len(kept) < 164
    for row in kept:
        for choice in row["choices"]:
            assert len(tokenizer(choice, add_special_tokens=False)["input_ids"]) <= 92


def test_building_requests_draws_no_progress_bar(tiny_run, model, capfd):
    """demix shows its own progress; the harness's per-task bar must not leak into the output."""
    run, _, _ = tiny_run
    config = make_config(run.root, benchmarks=[{"name": "math_mc", "evaluator": "lm_eval", "task": "demix_math", "limit": 5}])
    evaluator = Evaluator.from_run(config, run, "cpu")
    capfd.readouterr()
    evaluator.evaluate(model)
    captured = capfd.readouterr()
    assert "it/s" not in captured.err + captured.out
