"""A tiny run directory built on the fly: byte-level BPE, packed held-out splits, a random Llama.

Nothing is downloaded and nothing is mocked: the tokenizer is trained with `tokenizers`, the
held-out documents are packed with demix's PackedWriter, and the model is a real (random)
LlamaForCausalLM (helpers/tiny_data.py, helpers/models.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

# pack and tiny_llama are imported from here by the evaluation tests.
from helpers.models import tiny_llama
from helpers.tiny_data import DOMAINS, pack, write_tiny_data  # noqa: F401


def make_config(root: Path, **evaluation: Any):
    """The evaluation tests' config for run root ``root``; ``evaluation`` overrides that section."""
    from demix.config import config_from_dict

    return config_from_dict(
        {
            "output_dir": str(root),
            "data": {"domains": [{"name": d, "source": f"builtin:{d}"} for d in DOMAINS]},
            "model": {"seq_len": 32, "hidden_size": 32, "num_layers": 2, "num_heads": 2},
            "evaluation": {"heldout_tokens": 400, "batch_size": 4, **evaluation},
        }
    )


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """(run directory, tokenizer, held-out texts per domain) shared by the evaluation tests."""
    from demix.rundir import RunDir

    run = RunDir(tmp_path_factory.mktemp("run"))
    tokenizer, heldout = write_tiny_data(run)
    return run, tokenizer, heldout


@pytest.fixture()
def model(tiny_run):
    _, tokenizer, _ = tiny_run
    return tiny_llama(len(tokenizer))
