"""Fidelity metrics against scipy, bootstrap intervals, keying by name, degenerate inputs."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
from scipy import stats

from demix.errors import DemixError
from demix.fidelity import FidelityReport, Target, compare, ratio_score_from_bpb
from demix.fidelity.statistics import row_kendall, row_spearman, top_count


def _scores(n: int, noise: float, seed: int = 0):
    """Reference accuracies for three targets and proxies that track them with noise."""
    rng = np.random.default_rng(seed)
    ref, prx = {}, {}
    for i in range(n):
        mid = f"mix{i:02d}"
        ref[mid] = {"math": float(rng.uniform(0.2, 0.8)), "code": float(rng.uniform(0.1, 0.5)),
                    "bpb": float(rng.uniform(1.0, 2.0))}
        prx[mid] = {k: v + noise * float(rng.normal()) for k, v in ref[mid].items()}
        prx[mid]["math"] = min(max(prx[mid]["math"], 0.0), 1.0)
        prx[mid]["code"] = min(max(prx[mid]["code"], 0.0), 1.0)
    return ref, prx


TARGETS = [Target("math", capability=True), Target("code", capability=True),
           Target("bpb", capability=False, higher_is_better=False)]


def _vec(scores, name):
    return np.array([scores[m][name] for m in sorted(scores)])


def test_point_statistics_equal_scipy():
    ref, prx = _scores(16, noise=0.1)
    rep = compare(ref, prx, TARGETS, bootstrap=0)
    for name in ("math", "code", "bpb"):
        r, p = _vec(ref, name), _vec(prx, name)
        t = rep.targets[name]
        assert t.spearman.value == pytest.approx(stats.spearmanr(r, p).statistic, abs=1e-12)
        assert t.kendall.value == pytest.approx(stats.kendalltau(r, p).statistic, abs=1e-12)
        assert t.spearman.n == t.kendall.n == 16
    # Top 25% of 16 = 4 mixtures, best by reference: highest accuracy, lowest bits per byte.
    r, p = _vec(ref, "math"), _vec(prx, "math")
    top = np.argsort(-r)[:4]
    assert rep.targets["math"].top_spearman.n == 4
    assert rep.targets["math"].top_spearman.value == pytest.approx(stats.spearmanr(r[top], p[top]).statistic)
    r, p = _vec(ref, "bpb"), _vec(prx, "bpb")
    top = np.argsort(r)[:4]
    assert rep.targets["bpb"].top_spearman.value == pytest.approx(stats.spearmanr(r[top], p[top]).statistic)
    # CRR is sum(proxy) / sum(reference) on accuracies, undefined on bits per byte.
    assert rep.targets["math"].crr.value == pytest.approx(_vec(prx, "math").sum() / _vec(ref, "math").sum())
    assert not rep.targets["bpb"].crr.defined
    assert "lower-is-better" in rep.targets["bpb"].crr.reason


def test_statistics_with_ties_equal_scipy():
    ref = {f"m{i}": {"acc": v} for i, v in enumerate([0.1, 0.2, 0.2, 0.3, 0.3, 0.3, 0.5, 0.6])}
    prx = {f"m{i}": {"acc": v} for i, v in enumerate([0.2, 0.2, 0.1, 0.4, 0.3, 0.5, 0.5, 0.4])}
    rep = compare(ref, prx, bootstrap=0)
    r, p = _vec(ref, "acc"), _vec(prx, "acc")
    assert rep.targets["acc"].spearman.value == pytest.approx(stats.spearmanr(r, p).statistic)
    assert rep.targets["acc"].kendall.value == pytest.approx(stats.kendalltau(r, p).statistic)


def test_vectorised_bootstrap_statistics_equal_scipy():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 4, (200, 9)).astype(float)  # many ties and some constant rows
    b = rng.integers(0, 4, (200, 9)).astype(float)
    a[0] = 1.0
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rho = np.array([stats.spearmanr(x, y).statistic for x, y in zip(a, b)])
            tau = np.array([stats.kendalltau(x, y).statistic for x, y in zip(a, b)])
    np.testing.assert_allclose(row_spearman(a, b), rho, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(row_kendall(a, b), tau, atol=1e-12, equal_nan=True)
    assert math.isnan(row_spearman(a, b)[0]) and math.isnan(row_kendall(a, b)[0])


def test_confidence_intervals_contain_the_estimate_and_are_seeded():
    ref, prx = _scores(24, noise=0.08, seed=5)
    rep = compare(ref, prx, TARGETS, bootstrap=500, seed=1)
    checked = 0
    for t in rep.targets.values():
        for s in ("spearman", "kendall", "top_spearman", "crr"):
            st = t.statistic(s)
            if st.defined:
                assert st.ci_low <= st.value <= st.ci_high, (t.name, s, st)
                assert st.ci_low < st.ci_high
                assert 0 < st.resamples <= 500
                checked += 1
    assert checked == 11  # 4 statistics x 3 targets, less CRR on bits per byte
    for s, st in rep.macro.items():
        assert st.ci_low <= st.value <= st.ci_high, (s, st)
    again = compare(ref, prx, TARGETS, bootstrap=500, seed=1)
    other = compare(ref, prx, TARGETS, bootstrap=500, seed=2)
    assert again.to_dict() == rep.to_dict()
    assert other.targets["math"].spearman.ci_low != rep.targets["math"].spearman.ci_low
    # A wider level gives a wider interval around the same estimate.
    wide = compare(ref, prx, TARGETS, bootstrap=500, seed=1, confidence=0.99)
    assert wide.targets["math"].spearman.ci_low <= rep.targets["math"].spearman.ci_low


def test_keyed_by_name_not_position():
    ref, prx = _scores(16, noise=0.1)
    rep = compare(ref, prx, TARGETS, bootstrap=200, seed=0)
    keys = list(ref)
    random.Random(7).shuffle(keys)
    ref2 = {m: dict(reversed(list(ref[m].items()))) for m in keys}
    random.Random(8).shuffle(keys)
    prx2 = {m: dict(prx[m]) for m in keys}
    rep2 = compare(ref2, prx2, TARGETS, bootstrap=200, seed=0)
    assert rep2.to_dict() == rep.to_dict()


def test_macro_averages_capabilities_only():
    ref, prx = _scores(16, noise=0.1)
    rep = compare(ref, prx, TARGETS, bootstrap=100)
    for s in ("spearman", "kendall", "top_spearman", "crr"):
        vals = [rep.targets[c].statistic(s).value for c in ("math", "code")]
        assert rep.macro[s].value == pytest.approx(np.mean(vals))
        assert rep.macro[s].over == ["math", "code"]


def test_degenerate_inputs_are_undefined_with_a_reason():
    # Constant reference scores: the ranking is undefined, not 0 and not a crash.
    ref = {f"m{i}": {"acc": 0.5, "ok": 0.1 * i} for i in range(6)}
    prx = {f"m{i}": {"acc": 0.1 * i, "ok": 0.1 * i + 0.01} for i in range(6)}
    rep = compare(ref, prx, bootstrap=100)
    acc = rep.targets["acc"]
    assert not acc.spearman.defined and "reference scores are constant" in acc.spearman.reason
    assert not acc.kendall.defined
    assert math.isnan(acc.spearman.ci_low) and acc.spearman.resamples == 0
    # Top 25% of 6 mixtures is 2 points: undefined, with its n.
    assert not rep.targets["ok"].top_spearman.defined
    assert rep.targets["ok"].top_spearman.n == 2 and "needs at least 4" in rep.targets["ok"].top_spearman.reason
    # The macro averages what is defined and says what it left out.
    assert rep.macro["spearman"].over == ["ok"] and "acc" in rep.macro["spearman"].excluded
    assert rep.macro["spearman"].value == pytest.approx(1.0)
    assert not rep.macro["top_spearman"].defined
    # Constant proxy scores.
    rep = compare(ref, {m: {"acc": 0.3, "ok": 0.3} for m in ref}, bootstrap=0)
    assert "proxy scores are constant" in rep.targets["ok"].spearman.reason
    # Two mixtures: a rank correlation would be +-1 by construction.
    rep = compare({"a": {"x": 0.1}, "b": {"x": 0.2}}, {"a": {"x": 0.3}, "b": {"x": 0.1}}, bootstrap=50)
    assert not rep.targets["x"].spearman.defined and "at least 3" in rep.targets["x"].spearman.reason
    assert rep.targets["x"].crr.value == pytest.approx(0.4 / 0.3)
    # Undefined values serialise as null, never as a NaN token.
    text = rep.to_json()
    assert "NaN" not in text and json.loads(text)["targets"]["x"]["spearman"]["value"] is None


def test_top_share_count():
    assert [top_count(n, 0.25) for n in (4, 10, 12, 13, 16, 17)] == [1, 3, 3, 4, 4, 5]
    ref, prx = _scores(13, noise=0.05)
    rep = compare(ref, prx, TARGETS, bootstrap=0)
    assert rep.targets["math"].top_spearman.n == 4 and rep.targets["math"].top_spearman.defined


def test_crr_only_on_ratio_scale_scores():
    ref = {f"m{i}": {"neg_bpb": -1.0 - 0.1 * i, "bpb": 1.0 + 0.1 * i, "score": 2.0 + i} for i in range(5)}
    prx = {m: {k: v * 1.1 for k, v in d.items()} for m, d in ref.items()}
    rep = compare(ref, prx, ["neg_bpb", "score"], bootstrap=0)
    assert not rep.targets["neg_bpb"].crr.defined and "outside [0, 1]" in rep.targets["neg_bpb"].crr.reason
    assert not rep.targets["score"].crr.defined
    rep = compare(ref, prx, [Target("score", ratio_scale=True), Target("neg_bpb", ratio_scale=True)], bootstrap=0)
    assert rep.targets["score"].crr.value == pytest.approx(1.1)
    assert "negative" in rep.targets["neg_bpb"].crr.reason
    # bits per byte converted to a per-byte probability is ratio-scale and in (0, 1].
    conv_ref = {m: {"p": ratio_score_from_bpb(d["bpb"])} for m, d in ref.items()}
    conv_prx = {m: {"p": ratio_score_from_bpb(d["bpb"] * 1.1)} for m, d in ref.items()}
    rep = compare(conv_ref, conv_prx, bootstrap=0)
    assert rep.targets["p"].crr.defined and rep.targets["p"].crr.value < 1
    assert ratio_score_from_bpb(1.0) == 0.5


def test_bad_input_is_a_clear_error():
    ref, prx = _scores(5, noise=0.1)
    with pytest.raises(DemixError, match="no mixture id has both"):
        compare(ref, {"other": prx["mix00"]})
    broken = {m: dict(v) for m, v in prx.items()}
    del broken["mix03"]["code"]
    with pytest.raises(DemixError, match="mixture 'mix03' have no target 'code'"):
        compare(ref, broken, ["math", "code"])
    broken["mix03"]["code"] = float("nan")
    with pytest.raises(DemixError, match="not finite for mixture"):
        compare(ref, broken, ["code"])
    with pytest.raises(DemixError, match="no reference scores"):
        compare({}, prx)
    with pytest.raises(DemixError, match="share no target"):
        compare({"a": {"x": 1.0}}, {"a": {"y": 1.0}})


def test_partial_overlap_is_reported_and_json_round_trips(tmp_path):
    ref, prx = _scores(10, noise=0.1)
    prx.pop("mix09")
    prx["extra"] = dict(prx["mix00"])
    rep = compare(ref, prx, TARGETS, bootstrap=100, proxy_kind="trained@200000")
    assert rep.missing_proxy == ["mix09"] and rep.missing_reference == ["extra"]
    assert len(rep.mixtures) == 9 and rep.targets["math"].spearman.n == 9
    path = tmp_path / "fidelity.json"
    rep.save(path)
    back = FidelityReport.load(path)
    assert back.to_dict() == rep.to_dict()
    assert back.targets["bpb"].crr.reason == rep.targets["bpb"].crr.reason
    assert "trained@200000" in rep.table() and "macro" in rep.table()


def test_paired_difference_of_two_proxy_kinds():
    from demix.fidelity import paired_difference

    rng = np.random.default_rng(3)
    ids = [f"m{i}" for i in range(16)]
    reference = {m: {"a": float(rng.normal()), "b": float(rng.normal())} for m in ids}
    good = {m: {c: v + float(rng.normal(0, 0.2)) for c, v in s.items()} for m, s in reference.items()}
    noisy = {m: {c: v + float(rng.normal(0, 2.0)) for c, v in s.items()} for m, s in reference.items()}
    g = compare(reference, good, proxy_kind="merged", bootstrap=400, seed=1)
    n = compare(reference, noisy, proxy_kind="trained", bootstrap=400, seed=1)
    d = paired_difference(g, n)
    expected = np.mean([stats.spearmanr([reference[m][c] for m in ids], [good[m][c] for m in ids]).statistic
                        - stats.spearmanr([reference[m][c] for m in ids], [noisy[m][c] for m in ids]).statistic
                        for c in ("a", "b")])
    assert d.value == pytest.approx(expected) == pytest.approx(g.macro["spearman"].value - n.macro["spearman"].value)
    assert d.n == 16 and d.over == ["a", "b"] and d.resamples > 0
    assert 0 < d.ci_low <= d.value <= d.ci_high  # clearly ahead
    # Paired: the difference of a proxy kind with itself is exactly 0 on every resample.
    same = paired_difference(g, g)
    assert (same.value, same.ci_low, same.ci_high) == (0.0, 0.0, 0.0)
    assert paired_difference(n, g).value == pytest.approx(-d.value)
    # Different mixtures or reference scores: not two proxy kinds of one run.
    other = compare({m: reference[m] for m in ids[:8]}, good, proxy_kind="x", bootstrap=0)
    with pytest.raises(DemixError, match="different mixtures"):
        paired_difference(g, other)
    shifted = compare({m: {c: v + 1 for c, v in s.items()} for m, s in reference.items()}, good, bootstrap=0)
    with pytest.raises(DemixError, match="other reference scores"):
        paired_difference(g, shifted)


def test_paired_difference_across_two_sets_of_reference_models():
    """One set of proxies against two sets of reference models on the same mixtures (the two
    fidelity.pairing options): rho against the first minus rho against the second, on shared resamples."""
    from demix.fidelity import paired_difference

    rng = np.random.default_rng(4)
    ids = [f"m{i}" for i in range(16)]
    proxy = {m: {"a": float(rng.normal()), "b": float(rng.normal())} for m in ids}
    close = {m: {c: v + float(rng.normal(0, 0.2)) for c, v in s.items()} for m, s in proxy.items()}
    far = {m: {c: v + float(rng.normal(0, 2.0)) for c, v in s.items()} for m, s in proxy.items()}
    x = compare(close, proxy, proxy_kind="merged", bootstrap=400, seed=1)
    y = compare(far, proxy, proxy_kind="merged", bootstrap=400, seed=1)
    with pytest.raises(DemixError, match="other reference scores"):
        paired_difference(x, y)
    d = paired_difference(x, y, same_references=False)
    assert d.value == pytest.approx(x.macro["spearman"].value - y.macro["spearman"].value)
    assert d.n == 16 and 0 < d.ci_low <= d.value <= d.ci_high
    assert paired_difference(x, x, same_references=False).ci_high == 0.0
