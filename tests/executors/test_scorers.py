"""The merged-proxy scorer without a cluster: nothing is loaded before the first mixture, once,
with transformers' progress bars off; the local executor reports its setup time."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from demix.config import config_from_dict
from demix.errors import DemixError
from demix.executors import LocalExecutor, MergedProxyScorer, ProxyScorerFactory, make_executor
from demix.rundir import RunDir


def empty_run(tmp_path, **sections):
    data = {"output_dir": str(tmp_path), "data": {"domains": [{"name": "general", "source": "x"}]}, **sections}
    return config_from_dict(data), RunDir(tmp_path)


def test_the_local_executor_loads_nothing_until_the_first_mixture(tmp_path):
    config, run = empty_run(tmp_path)
    with make_executor(config, run) as ex:  # a run without checkpoints: building must not fail yet
        assert isinstance(ex, LocalExecutor) and isinstance(ex.scorer, MergedProxyScorer)
        assert ex.setup_seconds == 0.0
        with pytest.raises(DemixError, match="no component checkpoint"):
            ex.scorer({"general": 1.0})


def test_setup_runs_once_with_transformers_progress_bars_off(tmp_path, monkeypatch):
    from transformers.utils import logging as hf_logging

    import demix.evaluation
    import demix.merging

    bars = []

    class Builder:
        model = "the resident model"

        def build(self, mixture):
            self.mixture = mixture

    def builder(cls, config, run, device):
        bars.append(hf_logging.is_progress_bar_enabled())
        return Builder()

    def evaluator(cls, config, run, device):
        return SimpleNamespace(evaluate=lambda model: {"model": model, "device": device})

    monkeypatch.setattr(demix.merging.ProxyBuilder, "from_run", classmethod(builder))
    monkeypatch.setattr(demix.evaluation.Evaluator, "from_run", classmethod(evaluator))
    hf_logging.enable_progress_bar()
    config, run = empty_run(tmp_path, evaluation={"device": "cpu"})
    scorer = ProxyScorerFactory.from_run(config, run, "auto")()
    assert scorer({"general": 1.0}) == {"model": "the resident model", "device": "cpu"}
    assert scorer({"general": 1.0})["device"] == "cpu"
    assert bars == [False] and hf_logging.is_progress_bar_enabled()  # off while loading, restored after
    assert scorer.setup_seconds > 0
