"""`demix search` on a finished tiny run, as a user resumes it: settings that change scores are
refused by name with nothing touched, and a resume with the same settings (or after deleting a
corrupt plan, as the error advises) evaluates nothing and gives the same answer."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from helpers.battery import assert_unchanged, cli, snapshot
from tiny_run import build_tiny_run

#: What `demix search` rewrites on every call that runs: the resolved config, the log, and the
#: cache of checkpoint hashes (keyed by absolute path: a copied run hashes its checkpoints again).
CLI_OUTPUTS = ("config.yaml", "logs", "search/checkpoint_hashes.json")


def _write_config(root: Path, data: dict) -> Path:
    path = root / "c.yaml"
    path.write_text(yaml.safe_dump({**data, "output_dir": str(root / "run")}))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A tiny run (real base, components, merged proxies) whose search has finished."""
    root = tmp_path_factory.mktemp("search_battery")
    config, _ = build_tiny_run(root / "run", rounds=(6, 3))
    result = cli("search", str(_write_config(root, config.model_dump(mode="json"))), "-q")
    assert result.code == 0, result.text
    return root


@pytest.fixture
def user(finished, tmp_path):
    """A copy of the finished run for one case: (config path, run directory)."""
    root = tmp_path / "work"
    shutil.copytree(finished, root, symlinks=True)
    data = yaml.safe_load((finished / "c.yaml").read_text())
    return _write_config(root, data), root / "run"


def _unchanged(before, root: Path, run: Path) -> None:
    assert_unchanged(before, snapshot(root), outputs=[run / o for o in CLI_OUTPUTS], root=root)


@pytest.mark.parametrize("override, named", [
    ("evaluation.heldout_tokens=800", "evaluation.heldout_tokens: 400 -> 800"),
    ("merge.method=ties", 'merge.method: "linear" -> "ties"'),
])
def test_a_setting_that_changes_scores_is_refused_and_nothing_changes(user, override, named):
    config, run = user
    before = snapshot(run.parent)
    result = cli("search", str(config), "-q", "-s", override)
    assert result.code == 1, result.text
    assert "9 merged evaluation(s) scored under other settings" in result.text and named in result.text
    assert "new output_dir" in result.text and "Traceback" not in result.text
    # The store, every round file, best_mixture.json, and config.yaml too: a refused command
    # puts back the resolved config it saved, so the run never describes settings it refused.
    assert_unchanged(before, snapshot(run.parent), outputs=[run / "logs", run / "search/checkpoint_hashes.json"],
                     root=run.parent)


def test_resume_with_the_same_settings_evaluates_nothing_and_gives_the_same_answer(user):
    config, run = user
    before = snapshot(run.parent)
    result = cli("search", str(config), "-q")
    assert result.code == 0, result.text
    assert "9 evaluations in the store (0 new this run)" in result.text
    _unchanged(before, run.parent, run)


def test_settings_that_do_not_change_scores_resume_the_search(user):
    config, run = user
    before = snapshot(run.parent)
    result = cli("search", str(config), "-q", "-s", "evaluation.batch_size=2")
    assert result.code == 0, result.text
    assert "(0 new this run)" in result.text
    _unchanged(before, run.parent, run)


def test_a_deleted_corrupt_plan_is_planned_again_and_the_answer_does_not_move(user):
    config, run = user
    before = snapshot(run.parent)
    planned = run / "search" / "round_1" / "planned.json"
    planned.write_text("{garbage")
    result = cli("search", str(config), "-q")
    assert result.code == 1 and str(planned) in result.text and "delete it" in result.text, result.text
    planned.unlink()  # what the error advises
    result = cli("search", str(config), "-q")
    assert result.code == 0 and "(0 new this run)" in result.text, result.text
    _unchanged(before, run.parent, run)  # the same planned.json, round files and best_mixture.json
