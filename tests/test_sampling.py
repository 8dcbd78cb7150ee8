"""Mixture sampling: exact bounds (property-tested, on the component weights and on the data
mixture they stand for), dedup, prior and temperature, bad bounds."""

import logging

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from demix.config import BoundsConfig, SamplerConfig
from demix.data_mixture import MixtureMap
from demix.errors import DemixError
from demix.mixtures import mixture_key, prior_weights, rows_to_mixtures
from demix.sampling import clip_and_rescale_sample, resolve_bounds, sample_mixtures

D = ["general", "math", "code", "wiki", "books"]
TOKENS = {"general": 600, "math": 100, "code": 200, "wiki": 60, "books": 40}


@st.composite
def feasible_bounds(draw):
    """Random lower / upper / pinned bounds with sum(lower) <= 1 <= sum(upper)."""
    k = len(D)
    lower = np.array([draw(st.sampled_from([0.0, 0.0, 0.02, 0.1, 0.2])) for _ in range(k)])
    if lower.sum() > 0.9:
        lower *= 0.9 / lower.sum()
    upper = np.array([draw(st.floats(0.0, 1.0)) for _ in range(k)])
    upper = np.maximum(upper, lower)
    if upper.sum() < 1.0:  # widen the loosest domain until feasible
        i = int(np.argmax(upper - lower))
        upper[i] = min(1.0, upper[i] + 1.0 - upper.sum())
        if upper.sum() < 1.0:
            upper[:] = 1.0
    pinned = {}
    if draw(st.booleans()):
        i = draw(st.integers(0, k - 1))
        pin = float(lower[i] + draw(st.floats(0, 1)) * (upper[i] - lower[i]))
        rest_lower = lower.sum() - lower[i]
        rest_upper = upper.sum() - upper[i]
        if rest_lower + pin <= 1.0 and rest_upper + pin >= 1.0:
            pinned = {D[i]: pin}
    return BoundsConfig(
        lower={d: float(v) for d, v in zip(D, lower) if v > 0},
        upper={d: float(v) for d, v in zip(D, upper) if v < 1},
        pinned=pinned,
    )


@settings(max_examples=60, deadline=None)
@given(cfg=feasible_bounds(), seed=st.integers(0, 2**31), strength=st.sampled_from([(0.05, 0.5), (0.1, 5.0), (5.0, 50.0)]))
def test_samples_always_inside_random_bounds(cfg, seed, strength):
    bounds = resolve_bounds(D, cfg)
    sampler = SamplerConfig(min_concentration=strength[0], max_concentration=strength[1])
    w = sample_mixtures(D, 300, prior_weights(D, "tokens", TOKENS), sampler, bounds, seed, dedup=False)
    assert w.shape == (300, len(D))
    assert np.all(np.abs(w.sum(axis=1) - 1) < 1e-9)
    assert np.all(w >= bounds.lower - 1e-12) and np.all(w <= bounds.upper + 1e-12)
    for d, v in cfg.pinned.items():
        assert np.allclose(w[:, D.index(d)], v, atol=1e-12)


#: Upper bounds that force a small weight: books is always 1 - 0.984375 = 0.015625 < min_weight
#: (hypothesis found it; a share of small weights is then exactly 0.2, which the old assertion refused).
FORCED_SMALL = BoundsConfig(upper={"general": 0.0, "math": 0.0, "code": 0.0, "wiki": 0.984375, "books": 0.015625})


@settings(max_examples=30, deadline=None)
@given(cfg=feasible_bounds(), seed=st.integers(0, 2**31), min_weight=st.sampled_from([0.0, 0.03, 0.1]))
@example(cfg=FORCED_SMALL, seed=0, min_weight=0.03)
def test_min_weight_keeps_bounds_and_zeroes_small_weights(cfg, seed, min_weight):
    bounds = resolve_bounds(D, cfg)
    w = sample_mixtures(D, 200, None, SamplerConfig(min_weight=min_weight), bounds, seed, dedup=False)
    assert bounds.contains(w).all()
    if min_weight:
        # A weight below min_weight survives only where the bounds force it: its lower bound
        # forbids 0 (or it is pinned), or the row's other domains cannot reach 1 within their
        # upper bounds once the small weights are zeroed (the row is then left unchanged).
        can_zero = (bounds.lower <= 0) & ~bounds.fixed
        small = (w > 0) & (w < min_weight) & can_zero
        rest_upper = np.where((w > 0) & ~small, bounds.upper, 0.0).sum(axis=1)
        forced = rest_upper < 1.0 - 1e-12
        rows = small.any(axis=1)
        assert np.all(forced[rows]), w[rows & ~forced][:3]


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), g=st.sampled_from([0.1, 0.05, 0.01]),
       lo=st.sampled_from([0.0, 0.1, 0.2]), hi=st.sampled_from([0.3, 0.5, 1.0]))
def test_granularity_rounds_inside_bounds(seed, g, lo, hi):
    bounds = resolve_bounds(D, BoundsConfig(lower={"math": lo}, upper={"general": hi, "code": hi}))
    w = sample_mixtures(D, 200, None, SamplerConfig(granularity=g), bounds, seed)
    units = w / g
    assert np.allclose(units, np.round(units), atol=1e-6)
    assert bounds.contains(w).all()


def test_clip_and_rescale_breaks_bounds_ours_do_not():
    # Caps on the two big domains: the reference scripts' clip-then-rescale pushes mass back over them.
    bounds = resolve_bounds(D, BoundsConfig(upper={"general": 0.3, "code": 0.2}, lower={"books": 0.05}))
    prior = prior_weights(D, "tokens", TOKENS)
    theirs = clip_and_rescale_sample(20_000, prior, bounds, rng=np.random.default_rng(0))
    ours = sample_mixtures(D, 20_000, prior, SamplerConfig(), bounds, 0)
    broken = 1 - bounds.contains(theirs).mean()
    assert broken > 0.2, broken
    assert bounds.contains(ours).all()


def test_max_epochs_caps_weights_by_available_tokens():
    bounds = resolve_bounds(D, BoundsConfig(max_epochs=2.0), TOKENS, target_tokens=1000)
    assert bounds.upper[D.index("books")] == pytest.approx(2 * 40 / 1000)
    assert bounds.upper[D.index("general")] == 1.0
    w = sample_mixtures(D, 2000, prior_weights(D, "uniform"), SamplerConfig(), bounds, 1)
    epochs = w * 1000 / np.array([TOKENS[d] for d in D])
    assert epochs.max() <= 2.0 + 1e-9


def test_prior_is_the_sample_mean_and_temperature_flattens_it():
    prior = prior_weights(D, "tokens", TOKENS)
    w = sample_mixtures(D, 40_000, prior, SamplerConfig(), None, 0)
    assert np.abs(w.mean(axis=0) - prior).max() < 0.01
    hot = sample_mixtures(D, 40_000, prior, SamplerConfig(temperature=4.0), None, 0)
    uniform = np.full(len(D), 1 / len(D))
    assert np.abs(hot.mean(axis=0) - uniform).sum() < 0.5 * np.abs(prior - uniform).sum()
    tempered = prior ** 0.25 / (prior ** 0.25).sum()
    assert np.abs(hot.mean(axis=0) - tempered).max() < 0.01


def test_concentration_range_controls_spread():
    prior = prior_weights(D, "tokens", TOKENS)
    spiky = sample_mixtures(D, 5000, prior, SamplerConfig(min_concentration=0.05, max_concentration=0.2), None, 0)
    tight = sample_mixtures(D, 5000, prior, SamplerConfig(min_concentration=20, max_concentration=50), None, 0)
    assert spiky.std(axis=0).mean() > 3 * tight.std(axis=0).mean()
    # Small concentrations must not produce NaN rows (log-space Gamma draws).
    assert np.isfinite(spiky).all()


def test_dedup_returns_distinct_rows_and_stops_when_the_grid_is_exhausted():
    three = ["a", "b", "c"]
    w = sample_mixtures(three, 500, None, SamplerConfig(granularity=0.1), None, 0)
    keys = {mixture_key(m) for m in rows_to_mixtures(three, w)}
    assert len(keys) == len(w)
    assert len(w) <= 66  # compositions of 10 units into 3 parts
    assert len(w) >= 60
    small = sample_mixtures(three, 30, None, SamplerConfig(granularity=0.1), None, 0)
    assert len({mixture_key(m) for m in rows_to_mixtures(three, small)}) == 30


def test_sampling_is_deterministic_per_seed():
    a = sample_mixtures(D, 100, None, SamplerConfig(), None, 7)
    b = sample_mixtures(D, 100, None, SamplerConfig(), None, 7)
    c = sample_mixtures(D, 100, None, SamplerConfig(), None, 8)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize(
    "cfg, match",
    [
        (BoundsConfig(lower={"general": 0.6, "math": 0.5}), "lower bounds and pinned data shares sum to 1.1"),
        (BoundsConfig(upper={d: 0.15 for d in D}), "upper bounds sum to 0.75 < 1"),
        (BoundsConfig(lower={"nope": 0.1}), "unknown domain"),
        (BoundsConfig(lower={"math": 0.5}, upper={"math": 0.2}), "lower bound above upper bound on the data share"),
        (BoundsConfig(pinned={"math": 0.5}, upper={"math": 0.2}), "pinned data share 0.5 of domain 'math' is outside its bounds"),
        (BoundsConfig(upper={"math": 1.5}), "data shares outside \\[0, 1\\]"),
    ],
)
@pytest.mark.parametrize("share", [0.0, 0.5])
def test_bad_bounds_are_clear_errors(cfg, match, share):
    # The same errors with or without a map to the data mixture: they are about the data shares.
    with pytest.raises(DemixError, match=match):
        resolve_bounds(D, cfg, mapping=MixtureMap.standard(D, "general", share))


def test_max_epochs_infeasible_names_the_fix():
    with pytest.raises(DemixError, match="upper bounds sum") as err:
        resolve_bounds(D, BoundsConfig(max_epochs=0.5), TOKENS)
    assert "max_epochs" in err.value.fix


def test_bad_sampler_inputs():
    with pytest.raises(DemixError, match="does not divide 1"):
        sample_mixtures(D, 10, None, SamplerConfig(granularity=0.3), None, 0)
    with pytest.raises(DemixError, match="multiple of granularity"):
        sample_mixtures(D, 10, None, SamplerConfig(granularity=0.1), resolve_bounds(D, BoundsConfig(pinned={"math": 0.25})), 0)
    with pytest.raises(DemixError, match="positive for every domain"):
        sample_mixtures(D, 10, {**TOKENS, "books": 0}, SamplerConfig(), None, 0)
    with pytest.raises(DemixError, match="min_concentration"):
        sample_mixtures(D, 10, None, SamplerConfig(min_concentration=3, max_concentration=1), None, 0)


# ---------------------------------------------------------------------------- bounds on the data mixture

D4 = ["general", "math", "code", "wiki"]


def nonstandard_map(rng: np.random.Generator) -> MixtureMap:
    """Components with their own general shares and a leak of another domain: the general
    share (and often others) mixes several component weights, so bounds on it are linear rows."""
    mixtures = {"general": {"general": 1.0}}
    for d in D4[1:]:
        general = float(rng.uniform(0.1, 0.7))
        leak = float(rng.uniform(0.0, 0.2))
        other = str(rng.choice([x for x in D4[1:] if x != d]))
        mixtures[d] = {"general": general, d: 1.0 - general - leak, other: leak}
    return MixtureMap.from_mixtures(D4, mixtures)


def data_bounds(mapping: MixtureMap, rng: np.random.Generator, pin: bool) -> BoundsConfig:
    """Random data-share bounds around a reachable data mixture (so feasible), some domains left free."""
    a0 = rng.dirichlet(np.ones(len(D4)))
    data0 = mapping.to_data(a0)
    lower, upper, pinned = {}, {}, {}
    for j, d in enumerate(D4):
        kind = rng.integers(0, 4)
        if kind in (1, 3):
            lower[d] = float(data0[j] * (1 - rng.uniform(0.1, 1.0)))
        if kind in (2, 3):
            upper[d] = float(data0[j] + (1 - data0[j]) * rng.uniform(0.1, 1.0))
    if pin:
        j = int(rng.integers(0, len(D4)))
        lower.pop(D4[j], None)
        upper.pop(D4[j], None)
        pinned[D4[j]] = float(data0[j])
    return BoundsConfig(lower=lower, upper=upper, pinned=pinned)


def assert_data_inside(w, mapping, cfg, bounds):
    data = mapping.to_data(w)
    assert np.all(np.abs(w.sum(axis=1) - 1) < 1e-9) and np.all(w >= -1e-12)
    assert bounds.contains(w).all()
    for d, v in cfg.lower.items():
        assert data[:, D4.index(d)].min() >= v - 1e-9, d
    for d, v in cfg.upper.items():
        assert data[:, D4.index(d)].max() <= v + 1e-9, d
    for d, v in cfg.pinned.items():
        np.testing.assert_allclose(data[:, D4.index(d)], v, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(share=st.floats(0.0, 0.9), seed=st.integers(0, 2**31), pin=st.booleans(),
       min_weight=st.sampled_from([0.0, 0.0, 0.05]))
def test_data_bounds_hold_on_every_sample_of_the_standard_recipe(share, seed, pin, min_weight):
    """The standard recipe at any general share: every data-share bound is a box on one component
    weight, and every sampled candidate's data mixture is inside the bounds."""
    rng = np.random.default_rng(seed)
    mapping = MixtureMap.standard(D4, "general", share)
    cfg = data_bounds(mapping, rng, pin)
    bounds = resolve_bounds(D4, cfg, mapping=mapping)
    assert not bounds.has_rows
    w = sample_mixtures(D4, 300, None, SamplerConfig(min_weight=min_weight), bounds, seed, dedup=False)
    assert w.shape == (300, 4)
    assert_data_inside(w, mapping, cfg, bounds)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), min_weight=st.sampled_from([0.0, 0.05]), dedup=st.booleans())
def test_data_bounds_hold_on_every_sample_of_a_nonstandard_mapping(seed, min_weight, dedup):
    """Recorded training mixtures that differ: bounds on a mixed data share are linear rows on the
    component weights, met by rejection; every returned candidate is inside, and n come back."""
    rng = np.random.default_rng(seed)
    mapping = nonstandard_map(rng)
    cfg = data_bounds(mapping, rng, pin=False)
    bounds = resolve_bounds(D4, cfg, mapping=mapping)
    w = sample_mixtures(D4, 300, None, SamplerConfig(min_weight=min_weight), bounds, seed, dedup=dedup)
    assert w.shape == (300, 4)
    assert_data_inside(w, mapping, cfg, bounds)


MIXED = {"general": {"general": 1.0}, "math": {"general": 0.3, "math": 0.7}, "code": {"general": 0.5, "code": 0.5},
         "wiki": {"general": 0.6, "wiki": 0.4}}


def test_a_nonstandard_mapping_gives_linear_rows_and_the_sampler_rejects_outside_them():
    mapping = MixtureMap.from_mixtures(D4, MIXED)
    cfg = BoundsConfig(lower={"general": 0.7}, upper={"math": 0.2})
    bounds = resolve_bounds(D4, cfg, mapping=mapping)
    assert bounds.has_rows and bounds.space.row_names == ("general",)
    # math is affine in a_math alone: 0.7 a_math <= 0.2 is a box bound.
    assert bounds.upper[1] == pytest.approx(0.2 / 0.7)
    box_only = sample_mixtures(D4, 4000, None, SamplerConfig(), type(bounds)(bounds.domains, bounds.lower, bounds.upper), 0)
    assert (mapping.to_data(box_only)[:, 0] < 0.7 - 1e-9).mean() > 0.05  # the box alone lets data out: rows matter
    w = sample_mixtures(D4, 4000, None, SamplerConfig(granularity=0.01), bounds, 0)
    assert w.shape == (4000, 4) and np.allclose(w / 0.01, np.round(w / 0.01), atol=1e-6)
    data = mapping.to_data(w)
    assert data[:, 0].min() >= 0.7 - 1e-9 and data[:, 1].max() <= 0.2 + 1e-9


def test_max_epochs_caps_the_data_share():
    """max_epochs bounds the data a model trains on: data[d] <= max_epochs x tokens[d] / target."""
    tokens = {"general": 600, "math": 100, "code": 200, "wiki": 100}
    mapping = MixtureMap.standard(D4, "general", 0.5)
    bounds = resolve_bounds(D4, BoundsConfig(max_epochs=1.0), tokens, target_tokens=1000, mapping=mapping)
    # data[math] = 0.5 a_math <= 0.1 -> a_math <= 0.2 (as component weights the cap doubles).
    assert bounds.upper[1] == pytest.approx(0.2) and bounds.data_upper[1] == pytest.approx(0.1)
    w = sample_mixtures(D4, 3000, None, SamplerConfig(), bounds, 3)
    epochs = mapping.to_data(w) * 1000 / np.array([tokens[d] for d in D4])
    assert epochs.max() <= 1.0 + 1e-9 and epochs[:, 1].max() > 0.9  # the cap binds, exactly


@pytest.mark.parametrize("cfg, key, says", [
    (BoundsConfig(upper={"general": 0.4}), "search.bounds.upper.general", "a data share of 'general' <= 0.4 is not reachable"),
    (BoundsConfig(lower={"math": 0.6}), "search.bounds.lower.math", "a data share of 'math' >= 0.6 is not reachable"),
    (BoundsConfig(pinned={"general": 0.3}), "search.bounds.pinned.general", "'general' <= 0.3 is not reachable"),
])
def test_an_unreachable_data_bound_is_an_error_naming_the_region_and_the_key(cfg, key, says):
    with pytest.raises(DemixError) as err:
        resolve_bounds(D, cfg, mapping=MixtureMap.standard(D, "general", 0.5))
    assert err.value.what.startswith(key) and says in err.value.what, err.value.what
    assert "the proxies stand for data mixtures with general >= 0.5" in err.value.what
    assert "train.components.general_share" in err.value.fix


def test_bounds_reachable_alone_but_not_together_are_an_error_naming_the_region():
    # math >= 0.3 and code >= 0.3 (0.6 in all) leave general <= 0.4, below the 0.5 every proxy holds.
    with pytest.raises(DemixError, match="no reachable data mixture meets the data-share bounds") as err:
        resolve_bounds(D, BoundsConfig(lower={"math": 0.3, "code": 0.3}), mapping=MixtureMap.standard(D, "general", 0.5))
    assert "general >= 0.5" in err.value.what and "loosen search.bounds" in err.value.fix
    # max_epochs capping general below the general share is named as such.
    few_general = {"general": 100, **{d: 1000 for d in D[1:]}}  # general capped at 2 x 100 / 4100
    with pytest.raises(DemixError, match="^search.bounds.max_epochs: a data share of 'general' <= 0.04878"):
        resolve_bounds(D, BoundsConfig(max_epochs=2.0), few_general, None, MixtureMap.standard(D, "general", 0.5))


def test_a_pinned_share_that_mixes_component_weights_is_refused():
    mapping = MixtureMap.from_mixtures(D4, MIXED)
    with pytest.raises(DemixError, match="search.bounds.pinned.general: the data share of 'general' mixes several") as err:
        resolve_bounds(D4, BoundsConfig(pinned={"general": 0.6}), mapping=mapping)
    assert "search.bounds.lower.general" in err.value.fix
    # Pinning math (affine in a_math alone) is a box: a_math = 0.1 / 0.7.
    bounds = resolve_bounds(D4, BoundsConfig(pinned={"math": 0.1}), mapping=mapping)
    assert bounds.lower[1] == bounds.upper[1] == pytest.approx(0.1 / 0.7)


def test_rejection_that_finds_nothing_is_an_error_and_few_a_warning(caplog):
    mapping = MixtureMap.from_mixtures(D4, MIXED)
    # On the 0.1 grid every data share is a multiple of 0.01: none is in [0.7051, 0.7059], so
    # every rounded draw fails the row (rows are checked after the granularity).
    thin = resolve_bounds(D4, BoundsConfig(lower={"general": 0.7051}, upper={"general": 0.7059}), mapping=mapping)
    assert sample_mixtures(D4, 50, None, SamplerConfig(), thin, 0).shape == (50, 4)  # off the grid: reachable
    with pytest.raises(DemixError, match="no sampled component weights give a data mixture inside the bounds") as err:
        sample_mixtures(D4, 10, None, SamplerConfig(granularity=0.1), thin, 0)
    assert "'general'" in err.value.what and "widen search.bounds" in err.value.fix
    narrow = resolve_bounds(D4, BoundsConfig(lower={"general": 0.7}, upper={"general": 0.7003}), mapping=mapping)
    with caplog.at_level(logging.WARNING, logger="demix.sampling"):
        w = sample_mixtures(D4, 5000, None, SamplerConfig(), narrow, 0)
    assert 0 < w.shape[0] < 5000 and narrow.contains(w).all()
    assert "met the data-mixture bounds on ['general']" in caplog.text
