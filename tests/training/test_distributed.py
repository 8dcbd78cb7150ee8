"""The HF Trainer recipe under torchrun and under `accelerate launch` with 2 CPU processes (gloo):
the checkpoint has the same format as the single-process one (files, tensor names / dtypes /
shapes, demix.json keys)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).parent / "_dist_worker.py"


def _run(cmd: list[str], root: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    res = subprocess.run(cmd + [str(root)], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    return res.stdout


def _fresh_root(shared_data: Path, root: Path) -> Path:
    root.mkdir()
    (root / "data").symlink_to(shared_data / "data")
    (root / "tokenizer").symlink_to(shared_data / "tokenizer")
    return root


def _layout(model_dir: Path) -> tuple[list[str], dict[str, tuple[str, tuple[int, ...]]], list[str]]:
    from safetensors import safe_open

    files = sorted(p.name for p in model_dir.iterdir())
    tensors = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(f), "pt") as fh:
            for name in fh.keys():
                t = fh.get_slice(name)
                tensors[name] = (t.get_dtype(), tuple(t.get_shape()))
    keys = sorted(json.loads((model_dir / "demix.json").read_text()))
    return files, tensors, keys


def _launcher(name: str) -> list[str]:
    exe = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if exe is None:
        pytest.skip(f"{name} is not on PATH")
    if name == "torchrun":
        return [exe, "--standalone", "--nproc_per_node", "2"]
    # `--cpu` alone would start one process (accelerate spreads CPU processes only through MPI);
    # `--multi_gpu` uses the torchrun launcher, and on a machine without GPUs the Trainer runs gloo.
    return [exe, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517"]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_process_launchers_write_the_single_process_checkpoint_format(launcher, shared_data, tmp_path):
    launch = _launcher(launcher)
    single = _fresh_root(shared_data, tmp_path / "single")
    _run([sys.executable, str(WORKER)], single)
    multi = _fresh_root(shared_data, tmp_path / "multi")
    out = _run([*launch, str(WORKER)], multi)
    assert "rank 0 world 2" in out and "rank 1 world 2" in out

    a, b = _layout(single / "models" / "base"), _layout(multi / "models" / "base")
    assert a[0] == b[0], "different files"
    assert a[1] == b[1] and len(a[1]) > 0, "different tensors"
    assert a[2] == b[2], "different demix.json keys"
    prov = json.loads((multi / "models" / "base" / "demix.json").read_text())
    assert prov["tokens_seen"] == 6 * 8 * 32 and prov["schedule"]["steps"] == 6
    assert not (multi / "models" / "base" / "_checkpoints").exists()

    # The 2-process model is a real, loadable model trained on the same data.
    from demix.training import load_checkpoint

    model = load_checkpoint(multi / "models" / "base")
    assert sum(p.numel() for p in model.parameters()) > 0
