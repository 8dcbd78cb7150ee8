import pytest
import yaml

from demix.config import config_from_dict, dump_config, load_config
from demix.configs import commented_example, load_preset
from demix.errors import DemixError

MINI = {"data": {"domains": [{"name": "general", "source": "builtin:general"}, {"name": "code", "source": "x.jsonl"}]}}


def test_minimal_config_gets_defaults():
    cfg = config_from_dict(MINI)
    assert cfg.data.domain_names == ["general", "code"]
    assert cfg.train.components.general_share == 0.5


def test_unknown_key_is_named():
    with pytest.raises(DemixError, match="unknown key 'train.base.learning_rate'"):
        config_from_dict({**MINI, "train": {"base": {"learning_rate": 1}}})


def test_dotted_overrides_parse_yaml_values():
    cfg = config_from_dict(MINI, ["train.base.lr=3e-4", "search.rounds=[4,2]", "data.domains.1.max_tokens=1000"])
    assert cfg.train.base.lr == pytest.approx(3e-4)
    assert cfg.search.rounds == [4, 2]
    assert cfg.data.domains[1].max_tokens == 1000


def test_general_domain_must_exist_and_names_unique():
    with pytest.raises(DemixError, match="general_domain"):
        config_from_dict({"data": {"domains": [{"name": "code", "source": "x"}]}})
    with pytest.raises(DemixError, match="unique"):
        config_from_dict({"data": {"domains": [{"name": "general", "source": "x"}] * 2}})


def test_load_missing_and_bad_yaml(tmp_path):
    with pytest.raises(DemixError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(DemixError, match="not valid YAML"):
        load_config(bad)


def test_resolved_config_round_trips(tmp_path):
    cfg = config_from_dict(MINI, ["seed=7"])
    again = config_from_dict(yaml.safe_load(dump_config(cfg)))
    assert again == cfg


def test_commented_example_is_a_valid_config():
    text = commented_example()
    assert "# Peak learning rate." in text
    assert config_from_dict(yaml.safe_load(text)) == load_preset("demo")


def test_global_seed_seeds_every_section_seed_that_is_not_set():
    cfg = config_from_dict({**MINI, "seed": 7, "search": {"seed": 3}, "train": {"base": {"seed": 1}}})
    assert cfg.search.seed == 3 and cfg.train.base.seed == 1  # set in the config: kept
    unset = [cfg.data, cfg.train.components, cfg.train.reference, cfg.train.trained_proxy, cfg.evaluation, cfg.fidelity]
    assert [s.seed for s in unset] == [7] * len(unset)
    # The resolved config states every seed, so reloading it under another global seed changes none.
    again = config_from_dict({**yaml.safe_load(dump_config(cfg)), "seed": 0})
    assert again.train.components.seed == 7 and again.search.seed == 3
    assert config_from_dict(MINI).train.components.seed == 0


def test_trained_proxy_default_keeps_its_budget_when_seeded():
    cfg = config_from_dict({**MINI, "seed": 2})
    assert cfg.train.trained_proxy.tokens == 200_000 and cfg.train.trained_proxy.seed == 2
