"""Resuming a search: finished rounds are final, a lost plan is planned as it was, and scores made
under other evaluation or merge settings are never fitted with this config's."""

from __future__ import annotations

import json

import pytest

from demix.config import config_from_dict
from demix.errors import DemixError
from demix.rundir import RunDir
from demix.search import run_search, search_is_complete
from demix.store import Store
from search_fixtures import TOKENS, make_config, synthetic_result

ROUNDS = (8, 4, 3)


class Scorer:
    """The synthetic scorer, counting calls; ``fail_after`` calls raise (a search that stops)."""

    def __init__(self, fail_after: int | None = None):
        self.calls = 0
        self.fail_after = fail_after

    def __call__(self, m):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("the scorer stopped")
        self.calls += 1
        return synthetic_result(m)


def files_of(run: RunDir) -> dict[str, bytes]:
    """Every file the search wrote, by path relative to the run."""
    paths = [run.best_mixture, *sorted(p for p in (run.root / "search").rglob("*") if p.is_file())]
    return {str(p.relative_to(run.root)): p.read_bytes() for p in paths if p.is_file()}


def rows(run: RunDir) -> dict[str, tuple]:
    with Store(run.store_url) as store:
        return {e.mixture_key: (e.benchmarks, e.capabilities, e.provenance, e.completed_at) for e in store.evaluations_done()}


def changed(config, *overrides: str):
    return config_from_dict(config.model_dump(mode="json"), list(overrides))


@pytest.fixture
def finished(tmp_path):
    run = RunDir(tmp_path / "run")
    config = make_config(run.root, rounds=ROUNDS, pool_size=1000, top_k=40)
    run_search(config, run, Scorer(), TOKENS)
    return config, run


# ---------------------------------------------------------------------------- finished rounds are final


def test_a_resumed_search_rewrites_no_round_file_and_each_round_keeps_its_own_counts(finished):
    config, run = finished
    before = files_of(run)
    scorer = Scorer()
    result = run_search(config, run, scorer, TOKENS)
    assert scorer.calls == 0 and result.evaluated_now == 0
    assert files_of(run) == before
    # Each round was fitted on the evaluations of its own and earlier rounds, and says so.
    for r, n in enumerate((8, 12, 15)):
        assert json.loads(run.round_files(r).cv.read_text())["n"] == n
        assert json.loads(run.round_files(r).selection.read_text())["evaluations"] == n
    assert [s.evaluations for s in result.rounds] == [8, 12, 15]


def test_a_deleted_plan_is_planned_again_as_it_was(finished):
    """The tool's own advice for a corrupt planned.json is to delete it: the answer must not move."""
    config, run = finished
    before, stored = files_of(run), rows(run)
    run.round_files(1).planned.unlink()
    scorer = Scorer()
    result = run_search(config, run, scorer, TOKENS)
    assert scorer.calls == 0 and result.evaluated_now == 0
    assert files_of(run) == before  # the same planned.json, byte for byte, and the same best_mixture.json
    assert rows(run) == stored
    assert json.loads(run.round_files(0).cv.read_text())["n"] == 8


def test_a_plan_lost_in_the_middle_of_its_round_is_planned_again_as_it_was(tmp_path, finished):
    """Half of round 1 evaluated, then its planned.json lost: the stored rows keep their places
    and the rest comes from the seed, as the uninterrupted search planned it."""
    config, reference = finished
    run = RunDir(tmp_path / "again")
    config = changed(config, f"output_dir={run.root}")
    # One driver for both calls: it releases the claim its stopped scorer left (as a killed process's is).
    with Store(run.store_url) as store:
        with pytest.raises(RuntimeError, match="stopped"):
            run_search(config, run, Scorer(fail_after=8 + 2), TOKENS, store=store)
        assert len(rows(run)) == 10
        run.round_files(1).planned.unlink()
        run_search(config, run, Scorer(), TOKENS, store=store)
    for r in range(3):
        assert run.round_files(r).planned.read_bytes() == reference.round_files(r).planned.read_bytes(), r
    assert run.best_mixture.read_bytes() == reference.best_mixture.read_bytes()


def test_more_rounds_are_planned_from_the_finished_rounds_files(tmp_path, finished):
    """A search extended by a round plans it from the last round's pool read back: the same
    plan, files and answer as a search that ran all the rounds at once."""
    config, reference = finished
    run = RunDir(tmp_path / "extended")
    short = changed(config, f"output_dir={run.root}", "search.rounds=[8, 4]")
    run_search(short, run, Scorer(), TOKENS)
    round_1 = files_of(run)
    scorer = Scorer()
    run_search(changed(short, "search.rounds=[8, 4, 3]"), run, scorer, TOKENS)
    assert scorer.calls == 3
    assert {k: v for k, v in files_of(run).items() if "round_1" in k or "round_0" in k} == {
        k: v for k, v in round_1.items() if k != "best_mixture.json"}
    assert run.best_mixture.read_bytes() == reference.best_mixture.read_bytes()


def test_rounds_are_ranked_again_when_the_search_settings_change(finished):
    """Files are final for the settings they record: another objective ranks every round again
    on that round's own evaluations (the plans stay), and nothing is evaluated."""
    config, run = finished
    plans = {r: run.round_files(r).planned.read_bytes() for r in range(3)}
    scorer = Scorer()
    result = run_search(changed(config, "search.objective=weighted"), run, scorer, TOKENS)
    assert scorer.calls == 0 and [s.evaluations for s in result.rounds] == [8, 12, 15]
    assert {r: run.round_files(r).planned.read_bytes() for r in range(3)} == plans
    assert json.loads(run.best_mixture.read_text())["objective"]["kind"] == "weighted"


def test_an_unreadable_round_file_is_written_again_with_the_same_content(finished):
    config, run = finished
    before = files_of(run)
    run.round_files(0).cv.write_text("{garbage")
    (run.round_files(1).pool).write_bytes(b"not a zip")
    run_search(config, run, Scorer(), TOKENS)
    assert files_of(run) == before


# ---------------------------------------------------------------------------- scores under other settings


@pytest.mark.parametrize("override, named", [
    ("evaluation.heldout_tokens=1000", "evaluation.heldout_tokens: 32768 -> 1000"),
    ("merge.method=ties", 'merge.method: "linear" -> "ties"'),
    ("merge.params={density: 0.5}", "merge.params: {} -> {\"density\": 0.5}"),
    ("evaluation.benchmarks=[{name: bpb, domain: math}]", 'evaluation.benchmarks: ["heldout:general", "heldout:math", '),
    ("model.seq_len=128", "model.seq_len: 256 -> 128"),
])
def test_a_search_refuses_scores_made_under_other_settings(finished, override, named):
    config, run = finished
    before, stored = files_of(run), rows(run)
    new = changed(config, override)
    assert search_is_complete(config, run) and not search_is_complete(new, run)
    scorer = Scorer()
    with pytest.raises(DemixError) as exc:
        run_search(new, run, scorer, TOKENS)
    assert "15 merged evaluation(s) scored under other settings" in exc.value.what
    assert named in exc.value.what, exc.value.what
    assert "new output_dir" in exc.value.fix and "--rescore" in exc.value.fix
    assert scorer.calls == 0 and files_of(run) == before and rows(run) == stored


@pytest.mark.parametrize("override", ["evaluation.batch_size=2", "evaluation.device=cpu", "merge.shard_size=1GB"])
def test_settings_that_do_not_change_scores_keep_the_search(finished, override):
    config, run = finished
    before = files_of(run)
    assert search_is_complete(changed(config, override), run)
    scorer = Scorer()
    run_search(changed(config, override), run, scorer, TOKENS)
    assert scorer.calls == 0 and files_of(run) == before


def test_every_evaluation_and_the_chosen_mixture_record_the_settings(finished):
    from demix.search.settings import ScoringSettings

    config, run = finished
    settings = ScoringSettings.of(config)
    for _, _, provenance, _ in rows(run).values():
        assert provenance["settings"] == settings.fingerprint and provenance["scored_with"] == settings.values
        assert provenance["scored_with"]["evaluation.heldout_tokens"] == 32768
    assert json.loads(run.best_mixture.read_text())["settings"] == settings.fingerprint
    assert json.loads(run.round_files(2).selection.read_text())["settings"]["scoring"] == settings.fingerprint


def test_rows_written_before_settings_were_recorded_are_accepted(tmp_path):
    run = RunDir(tmp_path / "run")
    config = make_config(run.root, rounds=(6,), pool_size=500, top_k=20)
    run_search(config, run, Scorer(), TOKENS)
    with Store(run.store_url) as store:  # what an older demix stored: no settings in the provenance
        for e in store.evaluations_done():
            old = {k: v for k, v in e.provenance.items() if k not in ("settings", "scored_with")}
            store.replace(e.weights, e.benchmarks, e.capabilities, "merged", old)
    best = json.loads(run.best_mixture.read_text())
    del best["settings"]
    run.best_mixture.write_text(json.dumps(best))
    new = changed(config, "evaluation.heldout_tokens=1000")
    assert search_is_complete(new, run)
    scorer = Scorer()
    run_search(new, run, scorer, TOKENS)
    assert scorer.calls == 0


def test_rescore_evaluates_the_stored_mixtures_again_and_refits_every_round(finished):
    from demix.search.settings import ScoringSettings

    config, run = finished
    stored = rows(run)
    plans = {r: run.round_files(r).planned.read_bytes() for r in range(3)}
    new = changed(config, "evaluation.heldout_tokens=1000")
    scorer = Scorer()
    result = run_search(new, run, scorer, TOKENS, rescore=True)
    assert scorer.calls == 15 and result.evaluated_now == 15
    after = rows(run)
    assert set(after) == set(stored)  # replaced in place, nothing added
    fingerprint = ScoringSettings.of(new).fingerprint
    for key, (_, _, provenance, _) in after.items():
        assert provenance["settings"] == fingerprint
        assert (provenance["round"], provenance["plan_index"]) == (stored[key][2]["round"], stored[key][2]["plan_index"])
    assert {r: run.round_files(r).planned.read_bytes() for r in range(3)} == plans
    assert json.loads(run.round_files(2).selection.read_text())["settings"]["scoring"] == fingerprint
    assert search_is_complete(new, run) and not search_is_complete(config, run)
    scorer = Scorer()
    run_search(new, run, scorer, TOKENS)
    assert scorer.calls == 0


def test_a_round_stopped_while_its_files_are_rewritten_is_never_read_back(finished, monkeypatch):
    """selection.json marks a round finished: it is gone while the other files are rewritten,
    so a kill in between never leaves a round whose fit and ranking come from different settings."""
    import demix.search.loop as loop

    config, run = finished
    before = files_of(run)

    def killed(*args, **kwargs):
        raise RuntimeError("killed while ranking")

    monkeypatch.setattr(loop, "rank_pool", killed)
    with pytest.raises(RuntimeError, match="killed"):
        run_search(changed(config, "search.predictor=lightgbm"), run, Scorer(), TOKENS)
    assert not run.round_files(0).selection.exists()
    monkeypatch.undo()
    run_search(config, run, Scorer(), TOKENS)
    after = files_of(run)
    assert {k: after[k] for k in before} == before


def test_merged_rows_of_another_stage_under_other_settings_do_not_stop_the_search(finished):
    """The search fits only its own rows: a merged proxy the fidelity stage scored under other
    settings (no round, its own source) is neither fitted on nor a reason to stop."""
    config, run = finished
    other = {"general": 0.1, "math": 0.1, "code": 0.8}
    r = synthetic_result(other)
    with Store(run.store_url) as store:
        store.add(other, r.benchmarks, r.capabilities, "merged", None,
                  {"source": "demix fidelity", "settings": "0" * 16, "scored_with": {"evaluation.heldout_tokens": 1}})
    before = files_of(run)
    scorer = Scorer()
    run_search(config, run, scorer, TOKENS)
    assert scorer.calls == 0 and files_of(run) == before
