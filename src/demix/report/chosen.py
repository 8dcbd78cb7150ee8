"""The report's check of the chosen mixture: predicted against measured, and the predictor's
ranking against the reference models.

- :func:`chosen_check_rows`: per capability and for the objective, the single fit's prediction,
  the bootstrap ensemble's mean and interval (``best_mixture.json`` ``intervals``), the measured
  score of the chosen mixture's merged proxy (``measured``) and whether it lies inside.
- :func:`reference_agreement`: where the fidelity stage evaluated reference models (models
  really trained on a data mixture, ``fidelity/scores.json``), the Spearman rho between the
  objective the last round's predictors give each reference's component weights and the
  objective its reference model measured: whether the search's objective ranks real trained
  models as it ranks proxies. Read only; :mod:`demix.fidelity` is not changed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from demix.report.data import RunData
from demix.report.tables import Table, fmt
from demix.search.files import Interval

#: Fewest references behind a Spearman rho worth printing.
MIN_REFERENCES = 3


def chosen_check_rows(data: RunData) -> Table | None:
    """Rows ``score | predicted | ensemble mean | interval | measured | inside``; None when the
    file holds neither intervals nor a measurement (the table is then left out)."""
    b = data.best
    iv, m = b.intervals, b.measured
    if iv is None and m is None:
        return None
    level = f"{iv.level:.0%} interval" if iv is not None else "interval"
    head = ["score", "predicted", "ensemble mean", level, "measured", "inside"]
    rows: list[list[str]] = []
    for c, p in data.predictions.capabilities.items():
        i = iv.capabilities.get(c) if iv is not None else None
        rows.append([c, fmt(p.value), fmt(i.mean if i else None), _span(i), fmt(m.capabilities.get(c) if m else None),
                     _yes((m.inside_interval or {}).get(c) if m else None)])
    kind = iv.objective_kind if iv is not None else (m.objective_kind if m is not None else data.objective.kind)
    o = iv.objective if iv is not None else None
    rows.append([f"objective ({kind})", fmt(m.predicted_objective if m else None), fmt(o.mean if o else None), _span(o),
                 fmt(m.objective if m else None), _yes((m.inside_interval or {}).get("objective") if m else None)])
    return head, rows


def _span(i: Interval | None) -> str:
    return "-" if i is None else f"[{fmt(i.lower)}, {fmt(i.upper)}]"


def _yes(v: bool | None) -> str:
    return "-" if v is None else ("yes" if v else "no")


def chosen_check_text(data: RunData) -> str:
    """One or two sentences: the measured objective beside the predicted one (or why there is
    none), and how wide the intervals are."""
    b = data.best
    parts = []
    if b.measured is not None:
        m = b.measured
        parts.append(f"The chosen mixture's merged proxy was measured ({m.source}): objective {m.objective:.4f} "
                     f"against {m.predicted_objective:.4f} predicted (predicted - measured "
                     f"{m.predicted_objective - m.objective:+.4f}; a large positive gap means the search's objective "
                     "overfits the proxies).")
    else:
        parts.append("The chosen mixture's merged proxy was not measured (search.measure_chosen: true evaluates it "
                     "once).")
    if b.intervals is not None:
        iv = b.intervals
        noise = "a measured objective's" if iv.objective_includes_noise else "the members' spread only (ranks in the pool)"
        parts.append(f"Intervals: {iv.level:.0%}, from a bootstrap ensemble of {iv.members} {iv.kind} fits on "
                     f"{iv.n} evaluations; the objective's interval is {noise}.")
    return " ".join(parts)


@dataclass(frozen=True)
class ReferenceAgreement:
    """The predictor's ranking of the reference mixtures against their reference models'."""

    spearman: float | None
    """Spearman rho of predicted vs reference-measured objective (None: fewer than
    :data:`MIN_REFERENCES` references, or constant values)."""
    n: int
    """References behind it."""
    same_best: bool
    """The reference the predictors rank first is the one whose model measured best."""
    objective: str


def reference_agreement(data: RunData) -> ReferenceAgreement | None:
    """The agreement, or None when the run has no evaluated reference models (or no fit to
    predict them with)."""
    from scipy.stats import spearmanr

    from demix.objectives import objective_values
    from demix.proxy_kind import REFERENCE

    scores, fit = data.fidelity_scores, data.last_predictors
    if scores is None or fit is None:
        return None
    caps = list(fit.targets)
    keys = [k for k, per in scores.scores.items()
            if REFERENCE in per and k in scores.component_weights and set(caps) <= set(per[REFERENCE].capabilities)]
    if not keys:
        return None
    A = np.array([[float(scores.component_weights[k].get(d, 0.0)) for d in fit.domains] for k in keys])
    measured = np.array([[float(scores.scores[k][REFERENCE].capabilities[c]) for c in caps] for k in keys])
    s = data.config.search
    # rank_mean: percentile ranks among the references themselves, for both (what a ranking of them means).
    pred_obj = objective_values(s.objective, fit.predict_matrix(A, caps), caps, s.capability_weights)
    meas_obj = objective_values(s.objective, measured, caps, s.capability_weights)
    rho = None
    if len(keys) >= MIN_REFERENCES and np.ptp(pred_obj) > 0 and np.ptp(meas_obj) > 0:
        rho = float(spearmanr(pred_obj, meas_obj).statistic)
    return ReferenceAgreement(rho, len(keys), int(np.argmax(pred_obj)) == int(np.argmax(meas_obj)), s.objective)


def reference_agreement_text(data: RunData) -> str | None:
    """The agreement in words, or None when there are no reference models."""
    ag = reference_agreement(data)
    if ag is None:
        return None
    if ag.spearman is None:
        return (f"Only {ag.n} reference model(s) with scores: too few to say whether the predictor ranks them as they "
                f"measure (at least {MIN_REFERENCES}).")
    verdict = "agrees with" if ag.spearman > 0 else "does not agree with"
    return (f"Against the reference models (n = {ag.n}): the last round's predictors rank the references' mixtures by the "
            f"{ag.objective} objective with Spearman rho {ag.spearman:.2f} to their models' measured objective, so the "
            f"ranking {verdict} the references'; the predicted best reference is "
            f"{'the measured best' if ag.same_best else 'not the measured best'}.")
