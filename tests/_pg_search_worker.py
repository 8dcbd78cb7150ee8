"""One search driver of the concurrent-drivers test (tests/test_store_postgres.py).

usage: python _pg_search_worker.py RUN_DIR STORE_URL CALLS_FILE SLEEP GO_FILE

Signals readiness with RUN_DIR/ready.<pid>, waits for GO_FILE so that both drivers start
together, then runs the search; each scorer call appends "<mixture key> <pid>" to CALLS_FILE.
Prints the chosen component weights as JSON.
"""

import json
import os
import sys
import time
from pathlib import Path

from demix.mixtures import mixture_key
from demix.rundir import RunDir
from demix.search import run_search
from search_fixtures import TOKENS, make_config, synthetic_result  # tests/, the script's directory, is first on sys.path

run_dir, url, calls_file, sleep, go = sys.argv[1], sys.argv[2], Path(sys.argv[3]), float(sys.argv[4]), Path(sys.argv[5])


def scorer(mixture):
    time.sleep(sleep)
    with open(calls_file, "a") as fh:
        fh.write(f"{mixture_key(mixture)} {os.getpid()}\n")
        fh.flush()
        os.fsync(fh.fileno())
    return synthetic_result(mixture)


config = make_config(run_dir, rounds=[8, 4])
config = config.model_copy(update={"store": config.store.model_copy(update={"url": url, "wait_seconds": 0.2})})
(Path(run_dir) / f"ready.{os.getpid()}").write_text("")
while not go.exists():
    time.sleep(0.05)
result = run_search(config, RunDir(run_dir), scorer, TOKENS)
print(json.dumps({"component_weights": result.component_weights, "evaluated_now": result.evaluated_now}))
