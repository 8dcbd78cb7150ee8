"""Compute accounting: parameter counts of real tiny checkpoints and budget sums."""

from __future__ import annotations

import pytest
from transformers import LlamaForCausalLM

from demix.config import config_from_dict
from demix.errors import DemixError
from demix.fidelity.compute import (
    ParamCount,
    compare_budgets,
    count_parameters,
    demix_budget,
    heldout_eval_tokens,
    trained_budget,
)
from helpers.models import tiny_llama

VOCAB, HIDDEN = 256, 32


def _model(tied: bool) -> LlamaForCausalLM:
    return tiny_llama(VOCAB, hidden=HIDDEN, heads=4, max_positions=2048, tie=tied, embedding_scale=1.0)


@pytest.mark.parametrize("tied", [True, False])
def test_count_parameters_of_a_checkpoint(tmp_path, tied):
    model = _model(tied)
    model.save_pretrained(tmp_path, safe_serialization=True)
    pc = count_parameters(tmp_path)
    assert pc.total == model.num_parameters()
    assert pc.tied == tied
    assert pc.embedding == VOCAB * HIDDEN
    assert pc.head == VOCAB * HIDDEN  # the output matmul costs FLOPs even when tied
    assert pc.non_embedding == model.num_parameters(exclude_embeddings=True) - (0 if tied else VOCAB * HIDDEN)
    assert pc.flop_params == pc.non_embedding + VOCAB * HIDDEN
    # The in-memory model counts the same.
    assert count_parameters(model) == pc


def test_demix_budget_sums():
    pc = ParamCount(total=1_500, embedding=500, head=500, tied=True)  # flop_params = 1500
    b = demix_budget(pc, {"general": 1_000, "math": 2_000, "code": 3_000}, num_proxies=10,
                     eval_tokens_per_proxy=100, bytes_per_param=2)
    assert pc.flop_params == 1_500
    assert b.train_tokens == 6_000
    assert b.train_flops == 6 * 1_500 * 6_000
    assert b.eval_tokens == 1_000
    assert b.eval_flops == 2 * 1_500 * 1_000
    assert b.flops == b.train_flops + b.eval_flops
    assert b.tokens == 7_000
    # Merging is memory traffic: (K + 2) x total params x bytes per proxy, and no FLOPs.
    assert b.bytes_moved == 10 * (3 + 2) * 1_500 * 2
    assert [i.kind for i in b.items] == ["train", "train", "train", "merge", "eval"]
    assert b.to_dict()["flops"] == b.flops


def test_trained_budget_sums_and_comparison():
    b = trained_budget(1_000, 500, eval_tokens_per_model=100, num_models=8)
    assert b.train_tokens == 4_000 and b.train_flops == 6 * 1_000 * 4_000
    assert b.eval_tokens == 800 and b.eval_flops == 2 * 1_000 * 800
    same = trained_budget(1_000, [500] * 8, eval_tokens_per_model=100)
    assert same.to_dict()["flops"] == b.to_dict()["flops"]
    uneven = trained_budget(1_000, [100, 200, 300], eval_tokens_per_model=10)
    assert uneven.train_tokens == 600 and uneven.eval_tokens == 30
    d = demix_budget(ParamCount(1_000, 0, 0, True), {"a": 2_000}, 4, 100)
    rows = compare_budgets([d, b])
    assert rows[0]["flops_vs_demix"] == 1.0
    assert rows[1]["flops_vs_demix"] == pytest.approx(b.flops / d.flops)


def test_bad_budget_input_is_a_clear_error(tmp_path):
    with pytest.raises(DemixError, match="num_models is needed"):
        trained_budget(1_000, 500, 100)
    with pytest.raises(DemixError, match="num_models=3 but 2"):
        trained_budget(1_000, [1, 2], 100, num_models=3)
    with pytest.raises(DemixError, match="tokens of component 'math'"):
        demix_budget(ParamCount(10, 0, 0, True), {"math": -5}, 1, 1)
    with pytest.raises(DemixError, match="no component token budgets"):
        demix_budget(ParamCount(10, 0, 0, True), {}, 1, 1)
    with pytest.raises(DemixError, match="positive parameter count"):
        trained_budget(0, 5, 1, num_models=1)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(DemixError, match="reads safetensors only"):
        count_parameters(tmp_path)


def test_heldout_eval_tokens_from_config():
    data = {"data": {"domains": [{"name": "general", "source": "builtin:x"}, {"name": "math", "source": "builtin:y"}]},
            "evaluation": {"heldout_tokens": 1000}}
    assert heldout_eval_tokens(config_from_dict(data)) == 2000
    data["evaluation"]["benchmarks"] = [{"name": "g", "domain": "general"},
                                        {"name": "t", "evaluator": "lm_eval", "task": "x", "metric": "acc"}]
    assert heldout_eval_tokens(config_from_dict(data)) == 1000
