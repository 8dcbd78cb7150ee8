"""`demix merge`: merged checkpoints from a run config or a mergekit YAML; YAML written and read
back; bad input exits 1 with a message."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from demix.cli import main
from demix.merging import ComponentSet, ProxyBuilder, read_mergekit_config
from demix.merging.checkpoint import Checkpoint

MIX = {"general": 0.5, "math": 0.3, "code": 0.2}


def err(capsys) -> str:
    return " ".join(capsys.readouterr().err.split())


def load_dir(path):
    ck = Checkpoint.open(path)
    return {n: ck.get(n) for n in ck.tensors}


@pytest.fixture()
def config(family, tmp_path):
    base, comps = family
    data = {
        "output_dir": str(tmp_path / "run"),
        "data": {"domains": [{"name": d, "source": "builtin:none"} for d in comps]},
        "model": {"base_path": str(base)},
        "train": {"components": {"paths": {d: str(p) for d, p in comps.items()}}},
    }
    path = tmp_path / "demix.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_merge_from_config_equals_in_memory_proxy(config, family, tmp_path, capsys):
    out = tmp_path / "merged"
    main(["merge", str(config), "--mixture", "general=0.5,math=0.3,code=0.2", "--out", str(out), "-q"])
    assert "wrote merged checkpoint" in capsys.readouterr().out
    proxy = ProxyBuilder(ComponentSet.load(*family)).build(MIX)
    disk = load_dir(out)
    for name, p in proxy.named_parameters():
        assert torch.equal(p, disk[name]), name
    prov = json.loads((out / "demix.json").read_text())
    assert prov["method"] == "linear" and prov["mixture"] == MIX


def test_mergekit_yaml_round_trip(config, family, tmp_path):
    yml = tmp_path / "merge.yml"
    args = ["merge", str(config), "-m", "general=0.5,math=0.3,code=0.2", "--method", "ties", "-p", "density=0.5"]
    main(args + ["--write-mergekit-config", str(yml), "--out", str(tmp_path / "a"), "-q"])
    cfg = yaml.safe_load(yml.read_text())
    assert cfg["merge_method"] == "ties" and cfg["base_model"] == str(family[0].resolve())
    assert [m["parameters"]["weight"] for m in cfg["models"]] == [0.5, 0.3, 0.2]
    assert cfg["models"][0]["parameters"]["density"] == 0.5
    spec = read_mergekit_config(yml)
    assert spec.method == "ties" and spec.weights == MIX and spec.params["density"] == 0.5
    main(["merge", "--mergekit-config", str(yml), "--out", str(tmp_path / "b"), "-q"])
    a, b = load_dir(tmp_path / "a"), load_dir(tmp_path / "b")
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_mergekit_yaml_with_unnormalised_weights(family, tmp_path):
    base, comps = family
    # mergekit's task_arithmetic does not normalise: weights 0.3 + 0.3 scale the deltas as given.
    yml = tmp_path / "ta.yml"
    yml.write_text(
        yaml.safe_dump(
            {
                "merge_method": "task_arithmetic",
                "base_model": str(base),
                "models": [
                    {"model": str(comps["general"]), "parameters": {"weight": 0.3}},
                    {"model": str(comps["math"]), "parameters": {"weight": 0.3}},
                ],
                "dtype": "float32",
            }
        )
    )
    main(["merge", "--mergekit-config", str(yml), "--out", str(tmp_path / "o"), "-q"])
    got = load_dir(tmp_path / "o")
    b, g, m = load_dir(base), load_dir(comps["general"]), load_dir(comps["math"])
    name = "model.layers.0.mlp.down_proj.weight"
    want = b[name].double() + 0.3 * (g[name].double() - b[name].double()) + 0.3 * (m[name].double() - b[name].double())
    assert (got[name].double() - want).abs().max().item() < 1e-6


def test_unsupported_mergekit_configs(family, tmp_path, capsys):
    base, comps = family
    cases = {
        "karcher": ({"merge_method": "karcher", "models": [{"model": str(comps["math"])}]}, "merge_method 'karcher' is not one demix has"),
        "slices": ({"merge_method": "linear", "slices": [{"sources": []}]}, "uses 'slices'"),
        "gradient": (
            {"merge_method": "linear", "models": [{"model": str(comps["math"]), "parameters": {"weight": [0.1, 0.9]}}]},
            "gradient",
        ),
        "hub": (
            {"merge_method": "linear", "models": [{"model": "org/some-model", "parameters": {"weight": 1.0}}]},
            "not a local directory",
        ),
    }
    for name, (cfg, message) in cases.items():
        yml = tmp_path / f"{name}.yml"
        yml.write_text(yaml.safe_dump(cfg))
        with pytest.raises(SystemExit) as exc:
            main(["merge", "--mergekit-config", str(yml), "--out", str(tmp_path / name)])
        assert exc.value.code == 1
        assert message in err(capsys), name


def test_cli_bad_input_exits_nonzero(config, tmp_path, capsys):
    cases = [
        (["-m", "general=0.5,math=0.2", "--out", str(tmp_path / "o")], "sum to 0.7"),
        (["-m", "general=0.5,poetry=0.5", "--out", str(tmp_path / "o")], "unknown domain"),
        (["-m", "general=-1,math=2", "--out", str(tmp_path / "o")], "non-negative"),
        (["-m", "general=1", "--out", str(tmp_path / "o"), "--method", "nope"], "unknown merge method 'nope'"),
        (["-m", "general=1", "--out", str(tmp_path / "o"), "--method", "ties", "-p", "density=2"], "density"),
        (["-m", "general=1"], "nothing to write"),
        (["--out", str(tmp_path / "o")], "--mixture is missing"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as exc:
            main(["merge", str(config), *args])
        assert exc.value.code == 1
        assert message in err(capsys), args
    assert not (tmp_path / "o").exists()


def test_list_methods(capsys):
    main(["merge", "--list-methods"])
    out = capsys.readouterr().out
    for name in ("linear", "ties", "dare_ties", "della", "breadcrumbs", "slerp", "multislerp"):
        assert name in out
