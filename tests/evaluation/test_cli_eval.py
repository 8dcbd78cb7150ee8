"""`demix eval`: a checkpoint scored from the command line, scores written as JSON; bad input exits 1."""

from __future__ import annotations

import json

import pytest
import yaml

from demix.cli import main
from demix.evaluation import Evaluator

from .conftest import make_config


def err(capsys) -> str:
    """stderr with rich's line wrapping undone."""
    return " ".join(capsys.readouterr().err.split())


def write_config(path, run_root, **evaluation):
    data = make_config(run_root, **evaluation).model_dump(mode="json")
    path.write_text(yaml.safe_dump(data))
    return path


def test_eval_checkpoint_prints_and_writes_scores(tiny_run, model, tmp_path, capsys):
    run, tokenizer, _ = tiny_run
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(str(ckpt))  # safetensors
    config = write_config(tmp_path / "demix.yaml", run.root)
    out = tmp_path / "scores.json"
    main(["eval", str(config), "--checkpoint", str(ckpt), "--out", str(out), "--device", "cpu"])
    printed = capsys.readouterr().out
    assert "heldout:math" in printed and "bits_per_byte" in printed and "capabilities" in printed
    scores = json.loads(out.read_text())
    assert scores["checkpoint"] == str(ckpt)
    direct = Evaluator.from_run(make_config(run.root), run, "cpu").evaluate(model)
    assert scores["benchmarks"] == pytest.approx(direct.benchmarks, rel=1e-6)
    assert scores["capabilities"] == pytest.approx(direct.capabilities, rel=1e-6)
    assert scores["higher_is_better"] == {"heldout:general": False, "heldout:math": False, "heldout:code": False}


def test_eval_bad_input_exits_nonzero_with_a_message(tiny_run, tmp_path, capsys):
    run, _, _ = tiny_run
    config = write_config(tmp_path / "demix.yaml", run.root)
    with pytest.raises(SystemExit) as exc:
        main(["eval", str(config), "--checkpoint", str(tmp_path / "missing")])
    assert exc.value.code == 1
    assert "does not exist" in err(capsys)
    with pytest.raises(SystemExit) as exc:
        main(["eval", str(config)])
    assert exc.value.code == 1
    assert "exactly one of --checkpoint and --mixture" in err(capsys)
    bad = write_config(tmp_path / "bad.yaml", run.root, benchmarks=[{"name": "x", "domain": "poetry"}])
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(SystemExit) as exc:
        main(["eval", str(bad), "--checkpoint", str(tmp_path / "ckpt")])
    assert exc.value.code == 1
    assert "unknown domain 'poetry'" in err(capsys)


def save_components(run, model):
    """A base and one component per domain (base + a small random delta), as safetensors."""
    import torch

    model.save_pretrained(str(run.base))
    for i, domain in enumerate(("general", "math", "code")):
        torch.manual_seed(100 + i)
        with torch.no_grad():
            deltas = [torch.randn_like(p) * 0.05 for p in model.parameters()]
            for p, d in zip(model.parameters(), deltas):
                p.add_(d)
            model.save_pretrained(str(run.component(domain)))
            for p, d in zip(model.parameters(), deltas):
                p.sub_(d)


def test_resident_proxy_scores_follow_the_mixture(tiny_run, model, tmp_path, capsys):
    from demix.merging import ProxyBuilder

    run, _, _ = tiny_run
    save_components(run, model)
    config = make_config(run.root)
    evaluator = Evaluator.from_run(config, run, "cpu")
    builder = ProxyBuilder.from_run(config, run, "cpu")
    a = evaluator.evaluate(builder.build({"general": 0.6, "math": 0.2, "code": 0.2}))
    b = evaluator.evaluate(builder.build({"general": 0.1, "math": 0.1, "code": 0.8}))
    a_again = evaluator.evaluate(builder.build({"general": 0.6, "math": 0.2, "code": 0.2}))
    assert a_again.benchmarks == pytest.approx(a.benchmarks, rel=1e-6)
    assert all(b.benchmarks[n] != a.benchmarks[n] for n in a.benchmarks)

    # The CLI's --mixture path: a one-hot mixture is the component itself.
    out = tmp_path / "proxy.json"
    cfg_path = write_config(tmp_path / "demix.yaml", run.root)
    main(["eval", str(cfg_path), "--mixture", "general=0,math=1,code=0", "--out", str(out), "--device", "cpu"])
    proxy = json.loads(out.read_text())
    assert proxy["mixture"] == {"general": 0.0, "math": 1.0, "code": 0.0}
    main(["eval", str(cfg_path), "--checkpoint", str(run.component("math")), "--out", str(out), "--device", "cpu"])
    component = json.loads(out.read_text())
    assert proxy["benchmarks"] == pytest.approx(component["benchmarks"], rel=1e-5)
