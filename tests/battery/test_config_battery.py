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


def test_a_key_given_twice_in_the_config_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(f"output_dir: {tmp_path / 'run'}\nsearch: {{top_k: 10}}\n"
                    "data:\n  domains: [{name: general, source: 'builtin:general'}]\nsearch: {pool_size: 100}\n")
    result = cli("search", str(path), "-q")
    assert result.code == 1 and "key 'search' is given twice (line 5)" in result.text and str(path) in result.text


def test_a_users_config_yaml_in_output_dir_is_never_overwritten(tmp_path, monkeypatch):
    """output_dir "." with the user's own config.yaml there: the run would have written its
    resolved config over it."""
    monkeypatch.chdir(tmp_path)
    mine = "# my commented config\n" + yaml.safe_dump({**BASE, "output_dir": "."})
    (tmp_path / "config.yaml").write_text(mine)
    before = snapshot(tmp_path)
    result = cli("prepare", "config.yaml", "-q")
    assert result.code == 1 and "is not a config demix wrote" in result.text and "output_dir" in result.text
    assert_unchanged(before, snapshot(tmp_path), outputs=["logs"])
    assert (tmp_path / "config.yaml").read_text() == mine


def test_the_runs_own_config_yaml_is_rewritten_and_reloads(tmp_path):
    """GOOD: the resolved config.yaml demix wrote is the config a later verb (or Slurm) is given."""
    from demix.config import RESOLVED_HEADER, load_config

    path = _config(tmp_path, search={"pool_size": 100, "top_k": 10})
    assert cli("init", str(tmp_path / "example.yaml")).code == 0
    from demix.cli._common import open_run

    config, run = open_run(path, ["search.seed=4"])
    assert run.config.read_text().startswith(RESOLVED_HEADER)
    again, _ = open_run(run.config, [])
    assert again.search.seed == 4 and load_config(run.config).search.pool_size == 100


def test_report_of_a_file_says_it_is_not_a_run_directory(tmp_path):
    path = tmp_path / "best_mixture.json"
    path.write_text("{}")
    result = cli("report", str(path), "-q")
    assert result.code == 1 and f"'{path}' is a file, not a run directory" in result.text
    assert path.read_text() == "{}"
