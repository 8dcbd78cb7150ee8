"""The store on a real PostgreSQL server: claims, leases, dead drivers, concurrent drivers.

The server is a throwaway cluster on loopback (tests/_postgres.py; `.ci/run` installs the
binaries). Skipped, with the reason, only when no PostgreSQL binaries exist on the machine.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from _postgres import PostgresServer, find_bin_dir
from demix.errors import DemixError
from demix.mixtures import mixture_key
from demix.store import Store

pytest.importorskip("psycopg", reason="the postgres extra (psycopg) is not installed: pip install 'demix-llm[postgres]'")

M1 = {"general": 0.5, "math": 0.3, "code": 0.2}
M2 = {"general": 0.2, "math": 0.3, "code": 0.5}
TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def pg():
    if os.environ.get("DEMIX_TEST_POSTGRES_DIR"):  # started by .ci/run
        root = Path(os.environ["DEMIX_TEST_POSTGRES_DIR"])
        yield PostgresServer(root, int((root / "port").read_text()), find_bin_dir())
        return
    if find_bin_dir() is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) on this machine: apt-get install postgresql")
    server = PostgresServer.start()
    yield server
    server.stop()


@pytest.fixture
def url(pg, request):
    return pg.new_database(f"t_{request.node.name.lower()[:40]}")


def test_contract_on_postgres(url):
    with Store(url) as s:
        assert s.engine.dialect.name == "postgresql"
        assert s.add(M1, {"bpb": 1.2}, {"general": -1.2}, round=0, provenance={"seed": 1})
        assert not s.add(dict(M1), {"bpb": 9.9}, {"general": 9.9})  # never stored twice
        assert s.claim(M2, round=1)
        assert not s.claim(M2)  # this driver's own claim is live too
        assert s.count(status="pending") == 1
        assert s.complete(M2, {"bpb": 1.0}, {"general": -1.0})
        assert [e.weights for e in s.evaluations_done()] == [M1, M2]
        assert s.get(M1).benchmarks == {"bpb": 1.2}
        with pytest.raises(DemixError, match="not claimed"):
            s.complete({"general": 1.0}, {"b": 1.0}, {"c": 1.0})
    with Store(url) as s:  # reopening an existing server store
        assert s.count() == 2


def test_unreachable_server_is_named():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DemixError, match=f"cannot connect to the store 'postgresql\\+psycopg://demix:\\*\\*\\*@127.0.0.1:{port}"):
        Store(f"postgresql+psycopg://demix:secret@127.0.0.1:{port}/x")


def test_live_claim_is_kept_expired_claim_is_requeued(url):
    # A driver on another machine: only its lease tells whether it is alive.
    remote = Store(url, owner="other-host:123:abcd", lease_seconds=0.5)
    local = Store(url)
    assert remote.claim(M1, round=0)
    assert not local.claim(M1)
    assert local.release_pending() == 0  # a live driver's claim is never released
    time.sleep(0.7)
    assert local.claim(M1)  # lease expired: re-queued here
    assert local.pending_keys() == {mixture_key(M1): local.owner}
    # The slow remote driver finishes after all: its result is kept, the second one dropped.
    assert remote.complete(M1, {"b": 1.0}, {"c": 1.0})
    assert not local.complete(M1, {"b": 2.0}, {"c": 2.0})
    assert local.count() == 1 and local.get(M1).benchmarks == {"b": 1.0}
    remote.close()
    local.close()


def test_renew_keeps_a_slow_driver_s_claims(url):
    slow = Store(url, owner="other-host:7:aaaa", lease_seconds=0.6)
    other = Store(url)
    assert slow.claim(M1)
    for _ in range(4):
        time.sleep(0.3)
        assert slow.renew() == 1
        assert not other.claim(M1)
    slow.close()
    other.close()


def test_claims_of_a_killed_local_driver_are_released_at_once(url):
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(proc.stdout)  # exited: a killed search on this machine
    dead = Store(url, owner=f"{socket.gethostname()}:{dead_pid}:dead", lease_seconds=3600)
    assert dead.claim(M1) and dead.claim(M2)
    dead.close()
    with Store(url) as s:
        assert s.claim(M1)  # taken over without waiting an hour
        assert s.release_pending() == 2  # M2 (dead driver's) and M1 (our own)
        assert s.count(status="pending") == 0


def _claim_all(url: str, keys: list[dict], out, ready) -> None:
    with Store(url) as s:
        # Start claiming only when every process is connected: spawn start-up takes seconds, and
        # without the barrier the first process could claim everything before the others exist.
        ready.wait(120)
        out.put([mixture_key(m) for m in keys if s.claim(m)])


def test_racing_processes_claim_each_mixture_once(url):
    mixtures = [{"general": i / 100, "math": 1 - i / 100} for i in range(100)]
    Store(url).close()  # schema created once
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    ready = ctx.Barrier(3)
    procs = [ctx.Process(target=_claim_all, args=(url, mixtures if k % 2 else mixtures[::-1], out, ready)) for k in range(3)]
    for p in procs:
        p.start()
    won = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
    counts = Counter(k for w in won for k in w)
    assert len(counts) == 100 and set(counts.values()) == {1}
    # Processes 0 and 2 claim from the front, process 1 from the back: at least two must win some.
    assert sum(len(w) > 0 for w in won) >= 2, "the claims did not actually race"


def test_two_search_drivers_evaluate_each_mixture_once(url, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    calls, go = tmp_path / "calls.txt", tmp_path / "go"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(TESTS / "_pg_search_worker.py"), str(run_dir), url, str(calls), "0.25", str(go)]
    drivers = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    deadline = time.time() + 120
    while len(list(run_dir.glob("ready.*"))) < 2 and time.time() < deadline:
        time.sleep(0.1)
    go.write_text("")
    outs = [d.communicate(timeout=240) for d in drivers]
    for d, (_, stderr) in zip(drivers, outs):
        assert d.returncode == 0, stderr[-3000:]
    results = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outs]

    planned = [json.loads((run_dir / "search" / f"round_{r}" / "planned.json").read_text())["keys"] for r in (0, 1)]
    lines = [line.split() for line in calls.read_text().splitlines()]
    scored = Counter(k for k, _ in lines)
    assert sorted(scored) == sorted(k for keys in planned for k in keys)
    assert set(scored.values()) == {1}, "a mixture was evaluated twice"
    by_driver = Counter(pid for _, pid in lines)
    assert len(by_driver) == 2, f"one driver did all the work: {by_driver}"
    assert sum(r["evaluated_now"] for r in results) == len(lines) == 12
    # Both drivers fitted the same evaluations, so they chose the same mixture.
    assert results[0]["component_weights"] == pytest.approx(results[1]["component_weights"], abs=1e-12)
    with Store(url) as s:
        assert s.count() == 12 and s.count(status="pending") == 0
