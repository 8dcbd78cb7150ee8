"""Executors on a real tiny run: local vs Ray (a local 2-actor cluster), a killed actor, errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from demix.errors import DemixError
from demix.executors import LocalExecutor, ProxyScorerFactory, evaluate_planned, make_executor
from demix.mixtures import mixture_key
from demix.rundir import read_token_counts
from demix.search import run_search, search
from demix.store import Store
from tiny_run import build_tiny_run

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install 'demix-llm[ray]'")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("exec") / "run"
    return build_tiny_run(root, rounds=(6, 3))


@pytest.fixture(scope="module")
def cluster():
    """One local 2-CPU Ray cluster for the whole module (start-up costs seconds)."""
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


def copy_run(tiny, dest: Path, **executor):
    config, run = tiny
    shutil.copytree(run.root, dest, ignore=shutil.ignore_patterns("store.sqlite*", "search", "best_mixture.json", "eval"))
    data = config.model_dump(mode="json")
    data["output_dir"] = str(dest)
    data["executor"].update(executor)
    from demix.config import RunConfig
    from demix.rundir import RunDir

    return RunConfig.model_validate(data), RunDir(dest)


def rows(config, run):
    with Store(run.store_url) as s:
        return {e.mixture_key: e for e in s.evaluations_done()}


def suicidal(inner, victim: str, marker: str):
    """A scorer factory whose scorer kills its own process (SIGKILL, as the OOM killer does) the
    first time it is handed ``victim``: an actor dying in the middle of an evaluation."""

    def make():
        scorer = inner()

        def score(mixture):
            if mixture_key(mixture) == victim and not os.path.exists(marker):
                Path(marker).write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)
            return scorer(mixture)

        return score

    return make


@pytest.fixture(scope="module")
def local_result(tiny, tmp_path_factory):
    """The search of the tiny run on the local executor (executor.kind: local), as `demix search` runs it."""
    config, run = copy_run(tiny, tmp_path_factory.mktemp("local") / "run")
    return config, run, search(config, run)


def test_a_resumed_local_search_loads_no_model(local_result):
    config, run, result = local_result
    assert result.evaluated_now == result.evaluations == 9 and result.setup_seconds > 0
    again = search(config, run)
    assert again.evaluated_now == 0 and again.setup_seconds == 0.0  # every evaluation was in the store
    assert again.component_weights == pytest.approx(result.component_weights)


def test_ray_gives_the_local_store_and_a_killed_actor_loses_nothing(tiny, local_result, cluster, tmp_path):
    from demix.executors.ray_executor import RayExecutor

    lconfig, lrun, lresult = local_result
    config, run = copy_run(tiny, tmp_path / "ray", kind="ray", num_workers=2)
    victim = json.loads((lrun.round_dir(0) / "planned.json").read_text())["keys"][3]
    marker = tmp_path / "killed"
    factory = suicidal(ProxyScorerFactory.from_run(config, run, "cpu"), victim, str(marker))
    with RayExecutor(factory, num_workers=2, num_cpus=1, max_restarts=2) as ex:
        pids_before = ex.worker_pids()
        result = run_search(config, run, None, read_token_counts(run, config.data.domain_names), executor=ex)
        pids_after = ex.worker_pids()
        assert ex.requeued >= 1  # the killed actor's mixture (and any sent while it restarted)
    assert marker.is_file() and int(marker.read_text()) in pids_before
    assert len(set(pids_before) - set(pids_after)) == 1  # Ray restarted the dead actor

    local, remote = rows(lconfig, lrun), rows(config, run)
    assert sorted(local) == sorted(remote) and len(local) == 9
    for key, e in local.items():
        assert remote[key].weights == e.weights and remote[key].round == e.round
        assert remote[key].benchmarks == pytest.approx(e.benchmarks, abs=1e-6, rel=0)
        assert remote[key].capabilities == pytest.approx(e.capabilities, abs=1e-6, rel=0)
    with Store(run.store_url) as s:
        assert s.count(status="pending") == 0
    for r in (0, 1):
        assert (run.round_dir(r) / "planned.json").read_text() == (lrun.round_dir(r) / "planned.json").read_text()
    assert result.component_weights == pytest.approx(lresult.component_weights, abs=1e-6)


def test_search_with_executor_kind_ray_evaluates_on_ray_actors(tiny, local_result, cluster, tmp_path, monkeypatch):
    """`demix search` and `demix run` call search(): executor.kind=ray must not run locally."""
    import demix.executors
    from demix.executors.ray_executor import RayExecutor

    lconfig, lrun, lresult = local_result
    config, run = copy_run(tiny, tmp_path / "ray-search", kind="ray", num_workers=2)
    made, real = [], demix.executors.make_executor

    def spy(*args, **kwargs):
        executor = real(*args, **kwargs)
        made.append((executor, executor.worker_pids() if isinstance(executor, RayExecutor) else None))  # alive: not yet closed
        return executor

    monkeypatch.setattr(demix.executors, "make_executor", spy)
    result = search(config, run, device="cpu")
    [(executor, pids)] = made
    assert isinstance(executor, RayExecutor)
    assert len(set(pids)) == 2 and os.getpid() not in pids
    assert result.evaluated_now == 9 and result.setup_seconds > 0  # the actors' start-up
    assert sorted(rows(config, run)) == sorted(rows(lconfig, lrun))
    assert result.component_weights == pytest.approx(lresult.component_weights, abs=1e-6)


def test_make_executor_builds_ray_actors_from_the_config(tiny, cluster, tmp_path):
    config, run = copy_run(tiny, tmp_path / "cfg", kind="ray", num_workers=2)
    mixture = {"general": 0.2, "math": 0.5, "code": 0.3}
    expected = ProxyScorerFactory.from_run(config, run, "cpu")()(mixture)
    got = []
    with make_executor(config, run) as ex:
        assert ex.name == "ray" and ex.num_workers == 2
        ex.evaluate(iter([(7, mixture)]), lambda i, m, r: got.append((i, m, r)))
        # A scorer error (here: a mixture over an unknown domain) is raised, not retried.
        with pytest.raises(DemixError, match="physics"):
            ex.evaluate(iter([(0, {"general": 0.5, "physics": 0.5})]), lambda *a: None)
        assert ex.requeued == 0
    assert [(i, m) for i, m, _ in got] == [(7, mixture)]
    assert got[0][2]["benchmarks"] == pytest.approx(expected.benchmarks, abs=1e-6)


def test_a_bad_run_directory_fails_when_the_actors_start(tmp_path, cluster):
    from demix.config import config_from_dict
    from demix.executors.ray_executor import RayExecutor
    from demix.rundir import RunDir

    empty = config_from_dict({"output_dir": str(tmp_path), "data": {"domains": [{"name": "general", "source": "x"}]}})
    with pytest.raises(DemixError, match="no component checkpoint") as err:
        RayExecutor(ProxyScorerFactory.from_run(empty, RunDir(tmp_path), "cpu"), num_workers=1)
    assert "demix train components" in err.value.fix


def test_evaluate_planned_waits_for_another_driver_and_requeues_its_dead_claims(tmp_path):
    """Without Ray: a mixture held by a live driver is waited for; one whose lease expires is
    taken over and evaluated here."""
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    planned = [{"a": 1.0, "b": 0.0}, {"a": 0.5, "b": 0.5}, {"a": 0.0, "b": 1.0}]
    other = Store(url, owner="elsewhere:1:x", lease_seconds=0.3)
    assert other.claim(planned[1], round=0)
    me = Store(url)
    calls = []

    def scorer(m):
        calls.append(mixture_key(m))
        return {"benchmarks": {"b": m["a"]}, "capabilities": {"c": m["b"]}}

    def commit(i, m, result):
        return me.complete(m, result["benchmarks"], result["capabilities"])

    sleeps = []
    n = evaluate_planned(
        LocalExecutor(scorer), me, planned, commit, round=0, wait_seconds=0.1,
        sleep=lambda s: (sleeps.append(s), __import__("time").sleep(s)),
    )
    assert n == 3 and sorted(calls) == sorted(mixture_key(m) for m in planned)
    assert sleeps, "it should have waited for the other driver's claim"
    assert me.count() == 3 and me.count(status="pending") == 0


def test_unknown_executor_kind_is_a_config_error(tmp_path):
    from demix.config import config_from_dict

    with pytest.raises(DemixError, match="executor.kind"):
        config_from_dict({"data": {"domains": [{"name": "general", "source": "x"}]}, "executor": {"kind": "slurm"}})
