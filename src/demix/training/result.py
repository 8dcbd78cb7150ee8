"""What a training call returns, whichever backend trained the model, and its one-line summary.

Torch-free, so the command backend (your own trainer) needs neither torch nor transformers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from demix.checkpoints import Provenance


@dataclass
class TrainResult:
    """Outcome of one training call."""

    path: Path
    """The finished model directory."""

    provenance: Provenance | None
    """Its ``demix.json`` (None for an external checkpoint without one, and on the processes
    other than rank 0 of a distributed training, which write nothing)."""

    skipped: bool
    """True when the model was already finished (or external) and nothing was trained."""


def provenance_summary(result: TrainResult) -> str:
    """One line for the CLI: tokens, steps, final loss, held-out loss change, where written."""
    p = result.provenance
    if p is None:
        return f"{result.path} (external checkpoint)"
    text = f"{p.tokens_seen or 0:,} tokens"
    steps = (p.schedule or {}).get("steps")
    if steps is not None:
        text += f", {steps} steps"
    if (p.schedule or {}).get("trainer") == "command":
        text += ", trained by train.command.template"
    else:
        loss = p.details.get("final_train_loss")
        text += ", final train loss " + (f"{loss:.3f}" if loss is not None else "n/a")
    held = p.details.get("heldout_loss") or {}
    held_txt = ", ".join(
        f"{d} {v['before']:.3f}->{v['after']:.3f}" for d, v in held.items() if v.get("before") is not None
    )
    if held_txt:
        text += f", held-out loss {held_txt}"
    text += f" -> {result.path}"
    return text + (" (already done)" if result.skipped else "")
