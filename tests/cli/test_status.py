"""`demix status RUN_DIR` on a miniature search (synthetic held-out scorer, checkpoint files on
disk): rows scored under other evaluation settings are counted by what changed, rows scored
before benchmarks were added are counted as kept, and a directory that is no run is refused."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from demix.config import config_from_dict, save_config
from demix.rundir import RunDir
from demix.search import run_search
from demix.store import Store
from helpers.battery import cli

TOKENS = {"general": 600, "math": 200, "code": 200, "web": 300}


def config_for(root, domains, **evaluation):
    return config_from_dict({
        "output_dir": str(root),
        "data": {"domains": [{"name": d, "source": "x.jsonl"} for d in domains]},
        "evaluation": evaluation,
        "search": {"rounds": [10], "pool_size": 1000, "top_k": 20, "cv_folds": 3, "sampler": {"min_weight": 0.25}},
    })


def heldout_scorer(domains):
    """Bits per byte of every domain's held-out text (the default benchmarks), falling with its weight."""

    def score(m):
        bpb = {d: 2.0 - float(m.get(d, 0.0)) ** 0.5 for d in domains}
        return SimpleNamespace(benchmarks={f"heldout:{d}": v for d, v in bpb.items()},
                               capabilities={d: -v for d, v in bpb.items()},
                               higher_is_better={f"heldout:{d}": False for d in domains})

    return score


def checkpoints(run, domains):
    for d in [run.base, *(run.component(x) for x in domains)]:
        d.mkdir(parents=True, exist_ok=True)
        if not (d / "model.safetensors").exists():
            (d / "model.safetensors").write_bytes(b"weights" + d.name.encode())


@pytest.fixture
def searched(tmp_path):
    """A finished 3-domain search of 10 proxies with the default benchmarks."""
    run = RunDir(tmp_path / "run")
    domains = ["general", "math", "code"]
    checkpoints(run, domains)
    config = config_for(run.root, domains)
    run_search(config, run, heldout_scorer(domains), {d: TOKENS[d] for d in domains})
    save_config(config, run.config)
    with Store(run.store_url) as store:
        n = len(store.evaluations_done())
    assert n == 10
    return run, n


def test_status_counts_rows_scored_under_other_settings_by_what_changed(searched):
    run, n = searched
    result = cli("status", str(run.root))
    assert result.code == 0, result.text
    assert "of these, scored under other evaluation or merge settings: 0" in result.out
    save_config(config_for(run.root, ["general", "math", "code"], heldout_tokens=4096), run.config)
    result = cli("status", str(run.root))
    assert result.code == 0, result.text
    assert f"valid for the current components: {n}" in result.out
    assert f"of these, scored under other evaluation or merge settings: {n} (refused by the search;" in result.out
    assert "--rescore" in result.out
    assert f"{n}: evaluation.heldout_tokens: " in result.out and "-> 4096" in result.out


def test_status_counts_rows_scored_before_benchmarks_were_added(searched):
    run, n = searched
    domains = ["general", "math", "code", "web"]
    checkpoints(run, domains)
    save_config(config_for(run.root, domains), run.config)
    out = cli("status", str(run.root)).out
    assert f"valid for the current components: {n}" in out
    assert "scored under other evaluation or merge settings: 0" in out
    assert f"scored before benchmarks were added (kept, fitted on the benchmarks they have): {n}" in out
    assert f"{n}: heldout:web, capability web added" in out


def test_status_groups_two_settings_changes_apart(searched):
    from demix.search.settings import digest

    run, n = searched
    # Some rows re-recorded as scored with another evaluation seed: two groups, by what changed.
    with Store(run.store_url) as store:
        for e in store.evaluations_done()[:3]:
            values = {**e.provenance["scored_with"], "evaluation.seed": 7}
            store.annotate(e.mixture_key, {**e.provenance, "scored_with": values, "settings": digest(values)})
    save_config(config_for(run.root, ["general", "math", "code"], heldout_tokens=4096), run.config)
    out = cli("status", str(run.root)).out
    assert f"scored under other evaluation or merge settings: {n}" in out
    lines = [line.strip() for line in out.splitlines() if "evaluation.heldout_tokens: " in line]
    counts = {int(line.split(":")[0]): line for line in lines}
    assert sorted(counts) == [3, n - 3]
    assert "evaluation.seed: 7 -> 0" in counts[3] and "evaluation.seed" not in counts[n - 3]


def test_status_of_a_directory_that_is_no_run_names_the_fix(tmp_path):
    result = cli("status", str(tmp_path))
    assert result.code != 0
    assert "is not a run directory" in result.text and "output_dir" in result.text
