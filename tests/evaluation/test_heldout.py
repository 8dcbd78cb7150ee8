"""Held-out loss: bits per byte against a direct computation, reuse across proxies, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from demix.errors import DemixError
from demix.evaluation import Evaluator, resolve_benchmarks, token_byte_lengths
from demix.evaluation.heldout import HeldoutLoss, load_heldout_set
from demix.packing import PackedTokens

from .conftest import make_config, pack


def direct_bits_per_byte(model, tokenizer, prefix, seq_len, max_tokens):
    """Plain forward + cross_entropy, bytes counted on the decoded target text."""
    windows = torch.as_tensor(PackedTokens(prefix).sequences(seq_len, max_tokens))
    with torch.no_grad():
        logits = model(windows[:, :-1]).logits
    targets = windows[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).double(), targets.reshape(-1), reduction="none")
    keep = targets.reshape(-1) != tokenizer.eos_token_id
    # Consecutive windows' targets are consecutive stream tokens: decode them all at once.
    target_ids = targets.reshape(-1)[keep].tolist()
    nbytes = len(tokenizer.decode(target_ids).encode("utf-8"))
    total = float(nll[keep].sum())
    return total / (math.log(2) * nbytes), total / int(keep.sum()), nbytes


def test_bits_per_byte_matches_direct_computation(tiny_run, model):
    run, tokenizer, _ = tiny_run
    config = make_config(run.root)
    result = Evaluator.from_run(config, run, "cpu").evaluate(model)
    assert list(result.benchmarks) == ["heldout:general", "heldout:math", "heldout:code"]
    for domain in ("general", "math", "code"):
        bpb, lpt, nbytes = direct_bits_per_byte(model, tokenizer, run.data / domain / "heldout", 32, 400)
        name = f"heldout:{domain}"
        assert result.benchmarks[name] == pytest.approx(bpb, rel=1e-5)
        assert result.details[name]["loss_per_token"] == pytest.approx(lpt, rel=1e-5)
        assert result.details[name]["bytes"] == nbytes
        # The budget: 400 tokens in windows of 32 -> 12 windows of 32 targets, EOS targets left out.
        assert result.details[name]["tokens"] <= 12 * 32
        assert result.details[name]["tokens"] > 12 * 32 - 12
        # Default capability: the domain's benchmark, negated (lower bits per byte = higher score).
        assert result.capabilities[domain] == pytest.approx(-result.benchmarks[name])
        assert result.higher_is_better[name] is False


def test_byte_table_is_exact_for_byte_level_bpe(tiny_run):
    run, tokenizer, heldout = tiny_run
    table = token_byte_lengths(tokenizer)
    assert table[tokenizer.eos_token_id] == 0
    for text in heldout["general"][:5]:  # multi-byte characters split across tokens
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert int(table[ids].sum()) == len(text.encode("utf-8"))


def test_loss_per_token_metric_and_budget(tiny_run, model):
    run, _, _ = tiny_run
    config = make_config(
        run.root,
        heldout_tokens=64,
        benchmarks=[{"name": "math_loss", "domain": "math", "metric": "loss_per_token"}],
    )
    result = Evaluator.from_run(config, run, "cpu").evaluate(model)
    assert list(result.benchmarks) == ["math_loss"]
    assert result.details["math_loss"]["tokens"] <= 64  # two windows of 32
    assert result.benchmarks["math_loss"] == pytest.approx(result.details["math_loss"]["loss_per_token"])
    assert list(result.capabilities) == ["math"]


def test_same_proxy_twice_is_identical_and_changed_weights_change_scores(tiny_run, model):
    run, _, _ = tiny_run
    evaluator = Evaluator.from_run(make_config(run.root), run, "cpu")
    first = evaluator.evaluate(model)
    second = evaluator.evaluate(model)
    assert first.benchmarks == second.benchmarks
    assert first.capabilities == second.capabilities
    with torch.no_grad():  # the resident proxy gets new weights in place
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    third = evaluator.evaluate(model)
    for name in first.benchmarks:
        assert third.benchmarks[name] != first.benchmarks[name]


def test_dtype_bfloat16_model_is_scored_in_fp32(tiny_run, model):
    run, _, _ = tiny_run
    evaluator = Evaluator.from_run(make_config(run.root), run, "cpu")
    ref = evaluator.evaluate(model).benchmarks
    low = evaluator.evaluate(model.to(torch.bfloat16)).benchmarks
    for name, value in ref.items():
        assert math.isfinite(low[name])
        assert low[name] == pytest.approx(value, rel=0.05)


def test_batch_size_does_not_change_scores(tiny_run, model):
    run, tokenizer, _ = tiny_run
    table = token_byte_lengths(tokenizer)
    s = load_heldout_set(run.data / "code" / "heldout", "code", 32, 400, table)
    a = HeldoutLoss({"code": s}, batch_size=5).evaluate(model)["code"]  # 12 windows: uneven last batch
    b = HeldoutLoss({"code": s}, batch_size=12).evaluate(model)["code"]
    assert a["bits_per_byte"] == pytest.approx(b["bits_per_byte"], rel=1e-5)


def test_empty_heldout_split_is_a_clear_error(tiny_run, tmp_path):
    _, tokenizer, _ = tiny_run
    pack(tmp_path / "empty" / "heldout", tokenizer, [])
    with pytest.raises(DemixError, match="held-out split of domain 'empty'.*is empty"):
        load_heldout_set(tmp_path / "empty" / "heldout", "empty", 32, 400, token_byte_lengths(tokenizer))
    pack(tmp_path / "short" / "heldout", tokenizer, ["a b"])
    with pytest.raises(DemixError, match="fewer than one evaluation window"):
        load_heldout_set(tmp_path / "short" / "heldout", "short", 32, 400, token_byte_lengths(tokenizer))


def test_missing_heldout_split_names_the_file(tiny_run, tmp_path):
    run, tokenizer, _ = tiny_run
    config = make_config(tmp_path)
    # The run at tmp_path has a tokenizer but no data.
    tokenizer.save_pretrained(str(tmp_path / "tokenizer"))
    from demix.rundir import RunDir

    with pytest.raises(DemixError, match="heldout.meta.json' is missing"):
        Evaluator.from_run(config, RunDir(tmp_path), "cpu")


def test_unknown_domain_or_metric_is_a_clear_error(tiny_run):
    run, _, _ = tiny_run
    bad_domain = make_config(run.root, benchmarks=[{"name": "x", "domain": "poetry"}])
    with pytest.raises(DemixError, match="unknown domain 'poetry'"):
        resolve_benchmarks(bad_domain)
    bad_metric = make_config(run.root, benchmarks=[{"name": "x", "domain": "math", "metric": "accuracy"}])
    with pytest.raises(DemixError, match="unknown metric 'accuracy'"):
        Evaluator.from_run(bad_metric, run, "cpu")


def test_model_with_a_smaller_vocabulary_is_refused(tiny_run):
    from helpers.models import tiny_llama

    run, tokenizer, _ = tiny_run
    evaluator = Evaluator.from_run(make_config(run.root), run, "cpu")
    with pytest.raises(DemixError, match="vocabulary has 100 entries"):
        evaluator.evaluate(tiny_llama(100))


def test_special_targets_are_left_out_of_both_sums(tiny_run, model):
    """bits per byte over the non-EOS targets only: the EOS id has 0 bytes and a 0 mask."""
    run, tokenizer, _ = tiny_run
    table = token_byte_lengths(tokenizer)
    s = load_heldout_set(run.data / "math" / "heldout", "math", 32, 400, table)
    eos = s.targets == tokenizer.eos_token_id
    assert eos.any()
    assert torch.equal(s.mask == 0, eos)
    assert s.bytes == int(table[s.targets.numpy()].sum())
    assert s.tokens == int((~eos).sum())
    assert np.issubdtype(table.dtype, np.integer)
