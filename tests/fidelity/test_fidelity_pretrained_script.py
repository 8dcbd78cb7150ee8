"""benchmarks/fidelity_pretrained.py (issue 17's experiment on the smollm2 preset) end to end on a
tiny stand-in base: a random hidden-32 Llama and a byte-level BPE saved as safetensors in one
directory, passed as model.base_path and tokenizer.path, with budgets cut to a step or two."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _script():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("fidelity_pretrained", BENCH / "fidelity_pretrained.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    """A tiny base directory laid out like models/smollm2-135m (weights, config, tokenizer)."""
    from helpers.models import tiny_llama
    from helpers.tiny_data import domain_documents, train_tokenizer

    root = tmp_path_factory.mktemp("standin")
    base = root / "base"
    texts = [t for d in ("general", "math", "code") for t in domain_documents(d, 40, seed=0)]
    tok = train_tokenizer(texts, vocab_size=300)
    tok.save_pretrained(str(base))
    tiny_llama(len(tok), max_positions=64).save_pretrained(base, safe_serialization=True)
    assert (base / "model.safetensors").is_file()
    return root, base


SMALL = [f"data.domains.{i}.max_tokens=4000" for i in range(4)] + [
    "model.seq_len=32", "train.components.tokens=128", "train.reference.tokens=256", "train.trained_proxy.tokens=128",
    "evaluation.heldout_tokens=64", "evaluation.batch_size=4", "train.heldout_tokens=0", "search.rounds=[4]",
    "fidelity.bootstrap=50", "data.heldout_fraction=0.2",
]


def test_budgets_are_the_multiples_of_demix_compute_in_whole_steps():
    from demix.config import config_from_dict

    mod = _script()
    config = config_from_dict({"data": {"domains": [{"name": d, "source": f"builtin:{d}"} for d in
                                                    ("general", "math", "math_problems", "code")]},
                               "model": {"seq_len": 32}, "search": {"rounds": [4]}, "evaluation": {"heldout_tokens": 64},
                               "train": {"trained_proxy": {"batch_size": 4}}})
    # S = 4 proxies, E = 4 x 64 held-out tokens, C = 4 x 128: DeMix 6 C + 2 S E = 5120 token-FLOP units.
    plan = mod.trained_budgets(config, dict.fromkeys(["general", "math", "math_problems", "code"], 128), [0.5, 1, 2])
    assert plan[1] == (128, pytest.approx(1.0))          # (5120 - 2048) / 24 = 128 tokens: one step of 4 x 32
    assert plan[2] == (384, pytest.approx(11264 / 5120))  # 341 tokens rounds to 3 steps
    assert plan[0.5] == (128, pytest.approx(1.0))        # below one step: one step, and its real multiple says so


def test_script_runs_stepwise_on_a_stand_in_base(stand_in, capsys):
    root, base = stand_in
    mod = _script()
    out = root / "run"
    rc = mod.main(["--out", str(out), "--base", str(base), "--references", "3", "--multiples", "1,2",
                   "--humaneval-limit", "0", "--transfer-bytes", "20000", *sum((["-s", o] for o in SMALL), [])])
    assert rc == 0
    text = capsys.readouterr().out
    for s in ("step 0: reference models, merged proxies, merged only", "trained proxies at 1x, 2x", "macro rho transfer",
              "linear rule", "catch up"):
        assert s in text, s
    record = json.loads((out / "fidelity" / "benchmark-pretrained.json").read_text())
    assert [s["multiples"] for s in record["steps"]] == [[], [1.0], [1.0, 2.0]]
    assert record["steps"][2]["budgets"] == [record["plan"]["1.0"]["tokens"], record["plan"]["2.0"]["tokens"]]
    assert [r["proxy_kind"] for r in record["steps"][0]["summary"]] == ["merged"]
    assert record["steps"][2]["groups"]["transfer"] == ["stdlib_other"]
    assert set(record["steps"][2]["baselines"]) == {"own_weight", "linear_rule"}
    # The components were trained by continued pretraining of the given base, not from scratch.
    from demix.checkpoints import read_provenance

    assert read_provenance(out / "models" / "components" / "math").init == str(base)
    # Later steps reuse the earlier ones' models: 3 references in the store, one row each.
    from demix.store import Store

    with Store(f"sqlite:///{out / 'store.sqlite'}") as store:
        assert store.count("reference") == 3 and store.count("merged") == 3


def test_missing_base_is_named_with_the_fix(tmp_path, capsys):
    mod = _script()
    rc = mod.main(["--out", str(tmp_path / "run"), "--base", str(tmp_path / "nowhere"), "--plan"])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "nowhere") in err and "make smollm2" in err
