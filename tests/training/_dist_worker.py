"""Trains the base of a tiny run with demix's HF Trainer recipe; run plainly or under torchrun.

usage: [torchrun --nproc_per_node 2] _dist_worker.py RUN_ROOT
"""

import os
import sys
from pathlib import Path

# A script (run plainly or by a launcher), outside pytest's pythonpath: tests/ holds the helpers.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demix.rundir import RunDir  # noqa: E402
from demix.training import train_base  # noqa: E402
from helpers.training_run import make_config  # noqa: E402

root = Path(sys.argv[1])
config = make_config(root, **{"train.base.tokens": 6 * 8 * 32, "train.base.save_every_steps": 4})
result = train_base(config, RunDir(root), show_progress=False)
print(f"rank {os.environ.get('RANK', '0')} world {os.environ.get('WORLD_SIZE', '1')} -> {result.path}")
