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


# ---------------------------------------------------------------------------- component weights vs data mixture


def legacy_best(best: dict) -> dict:
    """The best_mixture.json demix 0.1 wrote for the same search: ``weights`` (the component
    weights, labelled as token shares), tokens and epochs computed from them, baselines and
    rounds with ``weights``, no data mixture and no mapping."""
    a, target = best["component_weights"], best["target_tokens"]
    old = {"weights": a, "unit": "token share (fraction of training tokens drawn from each domain)",
           "target_tokens": target, "domain_tokens": best["domain_tokens"],
           "tokens": {d: round(x * target) for d, x in a.items()},
           "epochs": {d: x * target / best["domain_tokens"][d] for d, x in a.items()}}
    old.update({k: best[k] for k in ("predicted", "top_k")})
    old["baselines"] = {n: {"weights": b["data_target"], "predicted": b["predicted"]} for n, b in best["baselines"].items()}
    old.update({k: best[k] for k in ("objective", "predictor")})
    old["rounds"] = [{k: r[k] for k in ("round", "planned", "evaluations")} | {"weights": r["component_weights"]}
                     for r in best["rounds"]]
    old.update({k: best[k] for k in ("mixture_key", "components", "settings")})
    return old


def as_demix_0_1(run: RunDir) -> None:
    """Turn a finished run into what demix 0.1 left: its best_mixture.json and round files without ``unit``."""
    run.best_mixture.write_text(json.dumps(legacy_best(json.loads(run.best_mixture.read_text())), indent=2))
    for path in (run.root / "search").rglob("*.json"):
        if path.name in ("planned.json", "selection.json"):
            data = json.loads(path.read_text())
            data.pop("unit")
            path.write_text(json.dumps(data, indent=2))


def test_a_legacy_best_mixture_is_rewritten_by_a_resumed_search_without_evaluating(finished):
    """A best_mixture.json of demix < 0.2 is not a finished search: `demix search` / `demix run`
    write it again, with both mixtures, from the finished rounds read back (no round file changes,
    nothing is evaluated)."""
    from demix.search import BestMixture

    config, run = finished
    current = run.best_mixture.read_bytes()
    as_demix_0_1(run)
    rounds_before = {k: v for k, v in files_of(run).items() if k != "best_mixture.json"}
    assert BestMixture.read(run.best_mixture).legacy and not search_is_complete(config, run)
    scorer = Scorer()
    result = run_search(config, run, scorer, TOKENS)
    assert scorer.calls == 0 and result.evaluated_now == 0
    assert {k: v for k, v in files_of(run).items() if k != "best_mixture.json"} == rounds_before  # read back
    assert run.best_mixture.read_bytes() == current  # the file this version writes, both mixtures
    best = BestMixture.read(run.best_mixture)
    assert not best.legacy and best.data_mixture["general"] >= 0.5 and search_is_complete(config, run)


def test_a_legacy_search_with_a_constraint_on_natural_is_ranked_again_without_evaluating(tmp_path):
    """`math >= natural` meant the natural *component weights* in demix 0.1; now it is the natural
    data mixture, so the rounds are ranked again (their plans and the store are kept)."""
    run = RunDir(tmp_path / "run")
    config = make_config(run.root, rounds=(6, 3), pool_size=500, top_k=20, constraints=["math >= natural"])
    run_search(config, run, Scorer(), TOKENS)
    current = run.best_mixture.read_bytes()
    plans = {r: run.round_files(r).planned.read_bytes() for r in range(2)}
    from demix.search.settings import ranking_fingerprint

    as_demix_0_1(run)
    old = ranking_fingerprint(config, TOKENS)  # what 0.1 recorded: its fingerprint held no map
    for r in range(2):
        sel = json.loads(run.round_files(r).selection.read_text())
        assert sel["settings"]["search"] != old
        sel["settings"]["search"] = old
        run.round_files(r).selection.write_text(json.dumps(sel))
    scorer = Scorer()
    run_search(config, run, scorer, TOKENS)
    assert scorer.calls == 0
    for r in range(2):  # ranked again under this version's settings
        assert json.loads(run.round_files(r).selection.read_text())["settings"]["search"] != old
    assert run.best_mixture.read_bytes() == current
    assert {r: json.loads(run.round_files(r).planned.read_text())["keys"] for r in range(2)} == {
        r: json.loads(p)["keys"] for r, p in plans.items()}


def _record_component(run: RunDir, domain: str, mixture: dict[str, float]) -> None:
    """A component demix trained with ``mixture``: its demix.json records it."""
    from demix.checkpoints import Provenance

    run.component(domain).mkdir(parents=True, exist_ok=True)
    Provenance(role="component", domain=domain, mixture=mixture).write(run.component(domain))


def test_a_recorded_training_mixture_gives_the_data_mixture_and_a_changed_one_is_searched_again(tmp_path):
    """The math component recorded as trained on 30% general data (not the recipe's 50%): the
    data mixture is a @ M with that row; when the record changes, the search is no longer
    complete, its rounds are read back (the ranking does not read the map) and the data mixture
    is computed again, with nothing evaluated."""
    import numpy as np

    from demix.data_mixture import MixtureMap

    run = RunDir(tmp_path / "run")
    config = make_config(run.root, rounds=(6, 3), pool_size=500, top_k=20)
    _record_component(run, "math", {"general": 0.3, "math": 0.7})
    result = run_search(config, run, Scorer(), TOKENS)
    best = json.loads(run.best_mixture.read_text())
    assert best["mapping"]["components"]["math"] == {"mixture": {"general": 0.3, "math": 0.7}, "source": "recorded"}
    assert best["mapping"]["components"]["code"]["source"] == "recipe"
    m = np.array([[1, 0, 0], [0.3, 0.7, 0], [0.5, 0, 0.5]])
    np.testing.assert_array_equal(MixtureMap.from_dict(best["mapping"]).matrix, m)
    a = np.array([result.component_weights[d] for d in ("general", "math", "code")])
    np.testing.assert_allclose([result.data_mixture[d] for d in ("general", "math", "code")], a @ m, atol=1e-15)
    assert search_is_complete(config, run)

    rounds_before = {k: v for k, v in files_of(run).items() if k != "best_mixture.json"}
    _record_component(run, "math", {"general": 0.5, "math": 0.5})
    assert not search_is_complete(config, run)
    scorer = Scorer()
    again = run_search(config, run, scorer, TOKENS)
    assert scorer.calls == 0 and again.component_weights == result.component_weights
    assert {k: v for k, v in files_of(run).items() if k != "best_mixture.json"} == rounds_before
    assert again.data_mixture["math"] == pytest.approx(0.5 * a[1]) and search_is_complete(config, run)


def test_a_changed_training_mixture_ranks_again_rounds_whose_ranking_reads_it(tmp_path):
    """With a data-share constraint the ranking depends on each component's training mixture:
    the round files record the map (ranking_fingerprint) and are ranked again when it changes."""
    from demix.search.settings import ranking_fingerprint
    from demix.training.roles import mixture_map

    run = RunDir(tmp_path / "run")
    config = make_config(run.root, rounds=(6,), pool_size=500, top_k=20, constraints=["weight.math >= 0.2"])
    _record_component(run, "math", {"general": 0.3, "math": 0.7})
    result = run_search(config, run, Scorer(), TOKENS)
    recorded = mixture_map(config, run)
    assert json.loads(run.round_files(0).selection.read_text())["settings"]["search"] == ranking_fingerprint(
        config, TOKENS, recorded)
    # data[math] = 0.7 a_math >= 0.2
    assert result.component_weights["math"] >= 0.2 / 0.7 - 1e-9
    _record_component(run, "math", {"general": 0.5, "math": 0.5})
    assert ranking_fingerprint(config, TOKENS, mixture_map(config, run)) != ranking_fingerprint(config, TOKENS, recorded)
    scorer = Scorer()
    again = run_search(config, run, scorer, TOKENS)
    assert scorer.calls == 0
    assert again.data_mixture["math"] >= 0.2 - 1e-9 and again.component_weights["math"] >= 0.4 - 1e-9
    # Without anything that reads the map, the fingerprint is the one demix 0.1 recorded.
    plain = make_config(run.root, rounds=(6,), pool_size=500, top_k=20)
    assert ranking_fingerprint(plain, TOKENS, recorded) == ranking_fingerprint(plain, TOKENS, None)
