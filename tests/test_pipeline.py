"""`demix run` end to end on a miniature config, killed and resumed.

One real subprocess run is SIGKILLed right after the base is finished (between stages), a
second one once the store holds two evaluated proxies (inside the proxy-evaluation stage), and a
third completes. The test then checks that no finished stage was redone, that every planned
mixture was evaluated exactly once, every file of the run directory, the chosen mixture and
the report's figures.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from demix.config import load_config
from demix.mixtures import mixture_key
from demix.rundir import RunDir, read_json
from tests.pipeline.miniature import DOMAINS, write_miniature

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


def _start(config: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "demix", "run", str(config), "--quiet"],
        cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` holds (fails if it exits or times out first)."""
    t0 = time.monotonic()
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before the kill point:\n{proc.stdout.read()}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail("kill point not reached in time")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _done_rows(run: RunDir) -> int:
    path = run.root / "store.sqlite"
    if not path.is_file():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute("SELECT count(*) FROM evaluations WHERE status = 'done'").fetchone()[0]
    except sqlite3.Error:  # tables not created yet
        return 0


def _digest(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_run_killed_between_and_inside_stages_resumes_to_a_complete_run(tmp_path):
    config_path = write_miniature(tmp_path)
    config = load_config(config_path)
    run = RunDir(config.run_dir)

    # (a) killed between stages: as soon as the base is finished.
    _kill_when(_start(config_path), lambda: (run.base / "demix.json").is_file())
    base_files = _digest(run.base)
    assert not run.best_mixture.exists()

    # (b) killed inside the proxy-evaluation stage, once two proxies are in the store.
    _kill_when(_start(config_path), lambda: _done_rows(run) >= 2)
    before = _done_rows(run)
    assert 2 <= before < sum(config.search.rounds)
    assert _digest(run.base) == base_files  # the base was not retrained

    # (c) runs to the end.
    proc = _start(config_path)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert "chosen mixture" in out and "predicted" in out  # the summary table, even with --quiet
    assert _digest(run.base) == base_files

    # Stage bookkeeping: three invocations; the last skipped what the earlier ones finished.
    timings = read_json(run.root / "timings.json")
    assert len(timings) == 3 and [t["finished"] for t in timings] == [False, False, True]
    last = {s["stage"]: s for s in timings[-1]["stages"]}
    assert list(last) == ["prepare", "train base", "train components", "search", "report"]
    assert last["prepare"]["skipped"] and last["train base"]["skipped"] and last["train components"]["skipped"]
    assert not last["search"]["skipped"] and not last["report"]["skipped"]
    second = {s["stage"]: s for s in timings[1]["stages"]}
    assert second["train base"]["skipped"] and "search" not in second  # killed inside the search

    # Every planned mixture evaluated exactly once: the store has one done row per planned key,
    # and the resumed search evaluated only what was missing.
    planned = [m for r in range(len(config.search.rounds)) for m in read_json(run.round_dir(r) / "planned.json")["mixtures"]]
    keys = [mixture_key(m) for m in planned]
    assert len(set(keys)) == len(keys) == sum(config.search.rounds)
    with sqlite3.connect(run.root / "store.sqlite") as conn:
        rows = conn.execute("SELECT mixture_key, status FROM evaluations WHERE proxy_kind = 'merged'").fetchall()
    assert sorted(k for k, _ in rows) == sorted(keys) and {s for _, s in rows} == {"done"}
    assert last["search"]["detail"]["evaluated_now"] == len(keys) - before

    # Every file of the run directory.
    root = run.root
    expected = [
        "config.yaml", "logs/demix.log", "timings.json", "store.sqlite", "best_mixture.json",
        "data/provenance.json", "tokenizer/tokenizer.json",
        "models/base/config.json", "models/base/model.safetensors", "models/base/demix.json",
        "report/report.html", "report/report.md",
    ]
    for d in DOMAINS:
        expected += [f"data/{d}/{s}.{ext}" for s in ("train", "heldout") for ext in ("bin", "idx.npy", "meta.json")]
        expected += [f"models/components/{d}/{f}" for f in ("config.json", "model.safetensors", "demix.json")]
    for r in range(len(config.search.rounds)):
        expected += [f"search/round_{r}/{f}" for f in ("planned.json", "cv.json", "pool.npz", "pareto.csv", "selection.json")]
    missing = [p for p in expected if not (root / p).is_file()]
    assert not missing, missing
    # A SIGKILL can strand an atomic write's hidden temporary file, never a half-written real one.
    assert all(p.name.startswith(".") for p in root.rglob("*.tmp"))
    for d in DOMAINS:
        prov = read_json(root / f"models/components/{d}/demix.json")
        assert prov["role"] == "component" and prov["domain"] == d
    log = (root / "logs/demix.log").read_text()
    assert log.count("stage train base: already done, skipped") == 2  # invocations (b) and (c)

    # The chosen mixture: component weights and the data mixture they stand for (each component
    # trained on half general data: data = a @ M), with baselines and CV errors.
    best = read_json(run.best_mixture)
    a, data = best["component_weights"], best["data_mixture"]
    for w in (a, data):
        assert list(w) == list(DOMAINS) and all(v >= 0 for v in w.values()) and sum(w.values()) == pytest.approx(1, abs=1e-9)
    assert data["general"] == pytest.approx(a["general"] + 0.5 * (1 - a["general"]))
    assert all(data[d] == pytest.approx(0.5 * a[d]) for d in DOMAINS if d != "general")
    assert best["mapping"]["region"] == "data mixtures with general >= 0.5"
    assert set(best["baselines"]) == {"natural", "uniform"}
    tokens = {d: read_json(root / f"data/{d}/train.meta.json")["tokens"] for d in DOMAINS}
    natural = best["baselines"]["natural"]
    for d in DOMAINS:
        assert natural["data_target"][d] == pytest.approx(tokens[d] / sum(tokens.values()))
        if natural["reachable"]:
            assert natural["data_mixture"][d] == pytest.approx(natural["data_target"][d])
    for c in DOMAINS:
        assert best["predicted"]["capabilities"][c]["cv_n"] == len(keys)

    # The report: real PNG figures, embedded in the html, linked from the markdown, with the audit.
    figs = sorted((root / "report/figures").glob("*.png"))
    assert {p.stem for p in figs} >= {"weights", "predicted_vs_measured", "cv_quality", "weight_histograms", "pool_scores", "pareto"}
    html = (root / "report/report.html").read_text()
    for p in figs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        import base64

        assert base64.b64encode(p.read_bytes()).decode() in html
    md = (root / "report/report.md").read_text()
    assert "## Merge-validity audit" in md and "| component | ||delta|| / ||base||" in md.replace("\\|", "|")
    for d in DOMAINS:
        assert f"| {d} |" in md


def test_search_of_retrained_components_is_not_complete(tmp_path):
    """best_mixture.json records the checkpoints it was searched on; a retrained base or
    component sends `demix run` back to the search, which evaluates the stale proxies again."""
    import numpy as np

    from demix.search import run_search, search_is_complete
    from tests.search_fixtures import TOKENS, make_config, synthetic_result

    config = make_config(tmp_path / "run", rounds=(6,), pool_size=500, top_k=20)
    run = RunDir(config.run_dir)
    run.base.mkdir(parents=True)
    (run.base / "model.safetensors").write_bytes(b"weights")
    rng = np.random.default_rng(0)
    run_search(config, run, lambda m: synthetic_result(m, 0.01, rng), TOKENS)
    assert read_json(run.best_mixture)["components"]
    assert search_is_complete(config, run)
    (run.base / "model.safetensors").write_bytes(b"retrained weights")
    assert not search_is_complete(config, run)
    # Every proxy used the base: all are evaluated again, in place, and the search is complete.
    result = run_search(config, run, lambda m: synthetic_result(m, 0.01, rng), TOKENS)
    assert result.evaluated_now == 6 and search_is_complete(config, run)


def test_search_is_complete_only_for_the_same_search_plan(tmp_path):
    """A finished search is reused only when best_mixture.json came from this config's plan."""
    import numpy as np

    from demix.cli.run import comparison_table
    from demix.config import config_from_dict, save_config
    from demix.search import BestMixture, run_search, search_is_complete
    from tests.search_fixtures import TOKENS, make_config, synthetic_result

    config = make_config(tmp_path / "run", rounds=(8, 4), pool_size=1000, top_k=40)
    run = RunDir(config.run_dir)
    save_config(config, run.config)
    assert not search_is_complete(config, run)
    rng = np.random.default_rng(0)
    run_search(config, run, lambda m: synthetic_result(m, 0.01, rng), TOKENS)
    assert search_is_complete(config, run)
    for override in ("search.rounds=[8, 4, 2]", "search.pool_size=2000", "search.objective=weighted",
                     "search.constraints=['math >= natural']"):
        changed = config_from_dict(config.model_dump(mode="json"), [override])
        assert not search_is_complete(changed, run), override
    run.best_mixture.write_text("{not json")
    assert not search_is_complete(config, run)

    # The console summary: chosen vs natural vs uniform, predicted scores and CV error.
    from rich.console import Console

    best = read_json(run.round_dir(1) / "selection.json")
    assert best["evaluations"] == 12
    console = Console(width=160, record=True)
    result = run_search(config, run, lambda m: synthetic_result(m, 0.01, rng), TOKENS)
    assert result.evaluated_now == 0 and search_is_complete(config, run)  # resumed from the store
    console.print(comparison_table(BestMixture.read(run.best_mixture)))
    text = console.export_text()
    for word in ("chosen", "natural", "uniform (nearest reachable)", "data general", "component general", "predicted math",
                 "CV RMSE", "(12)", "The proxies stand for data mixtures with general >= 0.5.",
                 "is shown at its nearest reachable data mixture"):
        assert word in " ".join(text.split()), word


def test_demo_unknown_preset_is_a_clear_error(tmp_path, capsys):
    from demix.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["demo", "--preset", "huge", "-s", f"output_dir={tmp_path / 'x'}"])
    assert exc.value.code == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "unknown preset 'huge'" in err and "demo, full" in err


FAKE_TRAINER = '''
import hashlib, shutil, sys
from pathlib import Path
import torch
from safetensors.torch import load_file, save_file
init, out, domain = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
gen = torch.Generator().manual_seed(int(hashlib.sha1(domain.encode()).hexdigest()[:8], 16))
weights = {k: v + 0.02 * v.abs().mean() * torch.randn(v.shape, generator=gen) for k, v in load_file(init / "model.safetensors").items()}
out.mkdir(parents=True, exist_ok=True)
save_file(weights, out / "model.safetensors")
shutil.copy(init / "config.json", out / "config.json")
(out.parent / f"trained-by-command-{domain}").write_text("")
'''


@pytest.mark.slow
def test_run_trains_with_the_command_backend_and_evaluates_on_ray_actors(tmp_path, monkeypatch):
    """`train.backend: command` makes `demix run` train components through the template, and
    `executor.kind: ray` makes it evaluate proxies on Ray actors (it used to do both in process)."""
    pytest.importorskip("ray", reason="the ray extra is not installed: pip install 'demix-llm[ray]'")
    import yaml

    import demix.executors
    from demix.checkpoints import read_provenance
    from demix.cli import main
    from demix.executors.ray_executor import RayExecutor

    config_path = write_miniature(tmp_path)
    data = yaml.safe_load(config_path.read_text())
    (tmp_path / "trainer.py").write_text(FAKE_TRAINER)
    data["train"]["backend"] = "command"
    data["train"]["command"] = {"template": f"{sys.executable} {tmp_path / 'trainer.py'} {{init}} {{output_dir}} {{domain}}",
                                "format": "json"}
    data["executor"] = {"kind": "ray", "num_workers": 2}
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    run = RunDir(data["output_dir"])

    made, real = [], demix.executors.make_executor

    def spy(*args, **kwargs):
        executor = real(*args, **kwargs)
        made.append((executor, executor.worker_pids() if isinstance(executor, RayExecutor) else None))
        return executor

    monkeypatch.setattr(demix.executors, "make_executor", spy)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    main(["run", str(config_path), "--quiet"])

    # Components: one trainer command per domain, registered for merging; the base by the HF recipe.
    for d in DOMAINS:
        assert (run.models / "components" / f"trained-by-command-{d}").is_file()
        prov = read_provenance(run.component(d))
        assert prov.role == "component" and prov.schedule is not None and prov.schedule["trainer"] == "command"
    assert read_provenance(run.base).schedule["lr"] == data["train"]["base"]["lr"]
    assert (run.train_commands / "commands.sh").is_file()
    # Proxies: evaluated by two Ray actors, none in this process.
    [(executor, pids)] = made
    assert isinstance(executor, RayExecutor) and len(set(pids)) == 2 and os.getpid() not in pids
    with sqlite3.connect(run.store_file) as conn:
        done = conn.execute("SELECT count(*) FROM evaluations WHERE status = 'done'").fetchone()[0]
    assert done == sum(data["search"]["rounds"])
    search = {s["stage"]: s for s in read_json(run.timings)[-1]["stages"]}["search"]
    assert search["detail"]["executor"] == "ray" and not search["skipped"]
    assert run.best_mixture.is_file() and run.report_html.is_file()
