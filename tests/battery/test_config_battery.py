"""Bad config input, as a user gives it: one clear error naming the key or file, exit 1, and
no file of the user's changed."""

from __future__ import annotations

import yaml

from helpers.battery import assert_unchanged, cli, snapshot

BASE = {"output_dir": "run", "data": {"domains": [{"name": "general", "source": "builtin:general"}]}}


def _config(tmp_path, **changes):
    data = {**BASE, **changes, "output_dir": str(tmp_path / "run")}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_domain_named_dot_dot_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "keep.txt").write_text("a user's file beside the run")
    for name in ("..", ".", ".hidden"):
        path = _config(tmp_path, data={"domains": [{"name": name, "source": "builtin:general"}], "general_domain": name})
        before = snapshot(tmp_path)
        result = cli("prepare", str(path), "-q")
        assert result.code == 1 and f"domain name '{name}' is not allowed" in result.text
        assert_unchanged(before, snapshot(tmp_path))
        assert not (tmp_path / "run").exists()


def test_top_k_not_below_the_pool_size_is_refused(tmp_path):
    path = _config(tmp_path, search={"pool_size": 100, "top_k": 100})
    result = cli("search", str(path), "-q")
    assert result.code == 1 and "search.top_k (100) must be smaller than search.pool_size (100)" in result.text
    path = _config(tmp_path, search={"pool_size": 100, "top_k": 10, "region_size": 101})
    result = cli("search", str(path), "-q")
    assert result.code == 1 and "search.region_size (101) is larger than search.pool_size (100)" in result.text


def test_a_config_path_that_is_a_directory_says_so(tmp_path):
    result = cli("prepare", str(tmp_path), "-q")
    assert result.code == 1 and f"config file '{tmp_path}' is a directory" in result.text


def test_unknown_key_and_bad_yaml_name_the_key_and_the_file(tmp_path):
    path = _config(tmp_path, search={"pool_sise": 10})
    result = cli("search", str(path), "-q")
    assert result.code == 1 and "unknown key 'search.pool_sise'" in result.text
    path.write_text("data: [unclosed\n")
    result = cli("search", str(path), "-q")
    assert result.code == 1 and str(path) in result.text and "not valid YAML" in result.text
