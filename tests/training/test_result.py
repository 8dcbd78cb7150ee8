"""The one-line summary of a training result, for each kind of record a backend writes."""

from __future__ import annotations

from pathlib import Path

from demix.checkpoints import Provenance
from demix.training import TrainResult, provenance_summary


def test_summary_of_a_recipe_record():
    prov = Provenance(
        role="component",
        domain="math",
        tokens_seen=2560,
        schedule={"steps": 10},
        details={"final_train_loss": 2.5, "heldout_loss": {"math": {"before": 3.0, "after": 2.0}}},
    )
    line = provenance_summary(TrainResult(Path("/m"), prov, skipped=False))
    assert line == "2,560 tokens, 10 steps, final train loss 2.500, held-out loss math 3.000->2.000 -> /m"
    assert provenance_summary(TrainResult(Path("/m"), prov, skipped=True)).endswith("(already done)")


def test_summary_of_a_command_record_and_of_an_external_checkpoint():
    prov = Provenance(role="component", domain="code", tokens_seen=1000, schedule={"trainer": "command", "command": "x"})
    assert provenance_summary(TrainResult(Path("/c"), prov, skipped=False)) == "1,000 tokens, trained by train.command.template -> /c"
    assert provenance_summary(TrainResult(Path("/given"), None, skipped=True)) == "/given (external checkpoint)"
