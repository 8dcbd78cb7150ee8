"""What `demix run` and `demix search` print about the chosen mixture: both mixtures (the data
mixture to train on and the component weights of the proxies) for chosen, natural and uniform,
the data mixtures the proxies can stand for, and the baselines shown at their nearest reachable
data mixture. Built on a hand-made best_mixture.json whose data mixture is a @ M."""

from __future__ import annotations

import numpy as np
import pytest
from rich.console import Console

from demix.data_mixture import MixtureMap, baseline_mixtures
from demix.search.files import DATA_MIXTURE_UNIT, Baseline, BestMixture, Prediction, Predictions, PredictorSpec, TopK

DOMAINS = ["general", "math", "code"]
TOKENS = {"general": 600, "math": 200, "code": 200}
MAP = MixtureMap.standard(DOMAINS, "general", 0.5)
A = np.array([0.4, 0.35, 0.25])  # component weights of the chosen proxies


def _predicted(x: float) -> Predictions:
    return Predictions({"math": Prediction(x, cv_rmse=0.0123, cv_spearman=0.91, cv_n=24)}, {})


def _best() -> BestMixture:
    data = MAP.to_data(A)
    baselines = {
        n: Baseline(b.component_weights, _predicted({"natural": 0.5, "uniform": 0.25}[n]), b.data_mixture, b.data_target,
                    b.reachable)
        for n, b in baseline_mixtures(MAP, TOKENS).items()
    }
    target = 1000
    return BestMixture(
        component_weights=dict(zip(DOMAINS, A.tolist())), data_mixture=dict(zip(DOMAINS, data.tolist())),
        unit=DATA_MIXTURE_UNIT, mapping=MAP.to_dict(), target_tokens=target, domain_tokens=TOKENS,
        tokens={d: int(round(x * target)) for d, x in zip(DOMAINS, data)},
        epochs={d: float(x * target / TOKENS[d]) for d, x in zip(DOMAINS, data)},
        predicted=_predicted(0.75), baselines=baselines,
        top_k=TopK(20, 500, {d: {"std": 0.01 * (i + 1), "min": 0.0, "max": 1.0} for i, d in enumerate(DOMAINS)}),
        predictor=PredictorSpec("ridge", 24, 3),
    )


def _text(renderable: object) -> list[str]:
    console = Console(width=220, record=True)
    console.print(renderable)
    return [" ".join(line.replace("│", " ").replace("┃", " ").split()) for line in console.export_text().splitlines()]


def _row(lines: list[str], label: str) -> str:
    return next(x for x in lines if x.startswith(label + " "))


def test_the_baselines_of_the_hand_made_file():
    data = MAP.to_data(A)
    assert data.tolist() == pytest.approx([0.7, 0.175, 0.125])  # general 0.4 + 0.5 x 0.6
    b = _best().baselines
    assert b["natural"].reachable and b["natural"].data_mixture == pytest.approx({"general": 0.6, "math": 0.2, "code": 0.2})
    assert b["uniform"].reachable is False
    assert b["uniform"].data_mixture == pytest.approx({"general": 0.5, "math": 0.25, "code": 0.25})


def test_the_run_summary_shows_both_mixtures_for_chosen_natural_and_uniform():
    from demix.cli.run import comparison_table

    lines = _text(comparison_table(_best()))
    head = next(x for x in lines if x.startswith("chosen natural"))
    assert head.startswith("chosen natural uniform (nearest reachable) CV RMSE")
    # The data mixture (a @ M), then the component weights, of chosen, natural and uniform.
    assert _row(lines, "data general") == "data general 0.700 0.600 0.500"
    assert _row(lines, "data math") == "data math 0.175 0.200 0.250"
    assert _row(lines, "data code") == "data code 0.125 0.200 0.250"
    assert _row(lines, "component general") == "component general 0.400 0.200 0.000"
    assert _row(lines, "component math") == "component math 0.350 0.400 0.500"
    assert _row(lines, "predicted math") == "predicted math 0.7500 0.5000 0.2500 0.0123 0.91 (24)"
    text = " ".join(lines)
    assert "Component weights: the merge coefficients of the proxies" in text
    assert "data mixture: the token shares of the training data they stand for (what to train on" in text
    assert "The proxies stand for data mixtures with general >= 0.5." in text
    assert ("The uniform data mixture {general 0.333, math 0.333, code 0.333} is not reachable: it is shown at its "
            "nearest reachable data mixture {general 0.500, math 0.250, code 0.250}.") in text
    assert "natural data mixture" not in text  # reachable: nothing to say
    # Sections: data rows, component rows, predicted rows, each block apart.
    order = [x.split(" ", 1)[0] for x in lines if x.split(" ", 1)[0] in ("data", "component", "predicted")]
    assert order == ["data"] * 3 + ["component"] * 3 + ["predicted"]


def test_the_search_summary_is_a_plan_of_the_data_mixture():
    from demix.cli.search import plan_table

    lines = _text(plan_table(_best()))
    assert lines[0].startswith("chosen data mixture (mean of the top 20 of 500 candidates)")
    assert "domain data mixture component weight top-k std (component weight) tokens epochs" in lines
    # Tokens and epochs of the data mixture: general 0.7 x 1000 = 700 tokens over 600 = 1.17 epochs.
    assert _row(lines, "general") == "general 0.7000 0.4000 0.0100 700 1.17"
    assert _row(lines, "math") == "math 0.1750 0.3500 0.0200 175 0.88"
    assert "The proxies stand for data mixtures with general >= 0.5." in " ".join(lines)


def test_a_file_before_demix_0_2_is_shown_as_component_weights_only():
    from demix.cli.run import comparison_table
    from demix.cli.search import plan_table

    old = _best().to_dict()
    legacy = {k: v for k, v in old.items() if k not in ("data_mixture", "component_weights", "mapping", "baselines")}
    legacy["weights"] = old["component_weights"]
    legacy["baselines"] = {n: {"weights": b["component_weights"], "predicted": b["predicted"]} for n, b in old["baselines"].items()}
    best = BestMixture.from_dict(legacy)
    for table in (comparison_table(best), plan_table(best)):
        text = " ".join(_text(table))
        assert "written by demix < 0.2: its weights are component weights" in text and "no data mixture is known" in text
    lines = _text(comparison_table(best))
    assert _row(lines, "component general") == "component general 0.400 0.200 0.000"
    assert not [x for x in lines if x.startswith("data ")]
    # No data mixture: no tokens or epochs either (demix < 0.2 computed them from the weights).
    assert _row(_text(plan_table(best)), "general") == "general - 0.4000 0.0100 - -"


def test_the_search_summary_shows_intervals_and_the_measured_chosen_proxy():
    from demix.cli.search import chosen_table
    from demix.search.files import ChosenIntervals, Interval, MeasuredChoice

    best = _best()
    assert chosen_table(best) is None  # neither recorded: nothing to show
    best.intervals = ChosenIntervals(0.8, 6, 24, "ridge", {"math": Interval(0.74, 0.01, 0.72, 0.77)},
                                     Interval(0.74, 0.01, 0.71, 0.78), "weighted", True)
    lines = _text(chosen_table(best))
    assert "not measured (search.measure_chosen: true measures it)" in " ".join(lines)
    assert _row(lines, "math") == "math 0.7500 [0.7200, 0.7700] - -"
    best.measured = MeasuredChoice("k", "search.measure_chosen", {"math": 0.79}, {}, 0.79, 0.75, "weighted",
                                   {"math": False, "objective": False})
    lines = _text(chosen_table(best))
    assert "measured (search.measure_chosen)" in lines[0] + " " + lines[1]
    assert _row(lines, "math") == "math 0.7500 [0.7200, 0.7700] 0.7900 no"
    assert _row(lines, "objective") == "objective (weighted) 0.7500 [0.7100, 0.7800] 0.7900 no"
