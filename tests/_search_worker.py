"""Runs a small search with a slow synthetic scorer (used by test_search.py's kill/resume test).

usage: python _search_worker.py RUN_DIR CALLS_FILE SLEEP_SECONDS

Each scorer call appends the mixture key to CALLS_FILE (flushed and fsynced) before returning,
so the test can count calls across a SIGKILL.
"""

import os
import sys
import time
from pathlib import Path

from demix.mixtures import mixture_key
from demix.rundir import RunDir
from demix.search import run_search
from search_fixtures import make_config, synthetic_result  # tests/, the script's directory, is first on sys.path

run_dir, calls_file, sleep = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])


def scorer(mixture):
    time.sleep(sleep)
    with open(calls_file, "a") as fh:
        fh.write(mixture_key(mixture) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return synthetic_result(mixture)


config = make_config(run_dir, rounds=[8, 4])
run_search(config, RunDir(run_dir), scorer, {"general": 600, "math": 200, "code": 200})
print("done")
