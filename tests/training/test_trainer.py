"""The Trainer pieces on their own: resuming from the last checkpoint that finished saving."""

from __future__ import annotations

from demix.training.trainer import checkpoint_step, last_complete_checkpoint


def _checkpoint(root, step, weights=True, state=True):
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if weights:
        (path / "model.safetensors").write_bytes(b"")
    if state:
        (path / "trainer_state.json").write_text("{}")
    return path


def test_resume_from_the_newest_complete_checkpoint_and_drop_half_written_ones(tmp_path):
    assert last_complete_checkpoint(tmp_path / "none") is None
    done = _checkpoint(tmp_path, 4)
    _checkpoint(tmp_path, 2)
    crashed = _checkpoint(tmp_path, 6, state=False)  # killed while saving
    (tmp_path / "checkpoint-x").mkdir()  # not a Trainer checkpoint: left alone
    assert last_complete_checkpoint(tmp_path) == done
    assert not crashed.exists() and (tmp_path / "checkpoint-x").is_dir()
    assert checkpoint_step(done) == 4 and checkpoint_step(None) == 0
