"""Component weights -> data mixture (demix.data_mixture) on known inputs: the standard recipe at
general shares 0.5 and 0.3, a component with a recorded non-default training mixture, the
mapping of data-mixture bounds onto component weights, the reachable region, the nearest
reachable mixture and the baselines."""

import numpy as np
import pytest

from demix.data_mixture import (
    DECLARED,
    RECORDED,
    MixtureMap,
    baseline_mixtures,
    component_space,
)
from demix.errors import DemixError

D = ["general", "math", "code"]
#: The math component recorded as trained on 30% general data, code on the recipe's 50%.
RECORDED_MIXTURES = {"general": {"general": 1.0}, "math": {"general": 0.3, "math": 0.7},
                     "code": {"general": 0.5, "code": 0.5}}


def recorded() -> MixtureMap:
    return MixtureMap.from_mixtures(D, RECORDED_MIXTURES, {"general": RECORDED, "math": DECLARED, "code": RECORDED})


def test_standard_recipe_at_share_one_half():
    m = MixtureMap.standard(D, "general", 0.5)
    np.testing.assert_array_equal(m.matrix, [[1, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5]])
    # data[general] = a_g + 0.5 (1 - a_g) = 0.2 + 0.4; data[d] = 0.5 a_d.
    assert m.data_of({"general": 0.2, "math": 0.5, "code": 0.3}) == pytest.approx(
        {"general": 0.6, "math": 0.25, "code": 0.15}, abs=1e-15)
    assert m.components_of({"general": 0.6, "math": 0.25, "code": 0.15}) == pytest.approx(
        {"general": 0.2, "math": 0.5, "code": 0.3}, abs=1e-12)
    assert m.components_of({"general": 0.4, "math": 0.3, "code": 0.3}) is None  # general < 0.5: no proxy
    assert m.components_of({"general": 0.5, "math": 0.5, "code": 0.0}) == pytest.approx({"general": 0, "math": 1, "code": 0})
    assert m.region() == "data mixtures with general >= 0.5"
    assert [m.reachable_range(j) for j in range(3)] == [(0.5, 1.0), (0.0, 0.5), (0.0, 0.5)]
    t = m.term(0)
    assert (t.component, t.offset, t.slope) == (0, 0.5, 0.5)
    assert (m.term(1).component, m.term(1).offset, m.term(1).slope) == (1, 0.0, 0.5)
    assert not m.is_identity


def test_standard_recipe_at_share_three_tenths():
    m = MixtureMap.standard(D, "general", 0.3)
    a = np.array([[0.2, 0.5, 0.3], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(m.to_data(a), [[0.2 + 0.3 * 0.8, 0.35, 0.21], [1, 0, 0], [0.3, 0, 0.7]], atol=1e-15)
    assert m.region() == "data mixtures with general >= 0.3"
    assert m.to_components(np.array([0.3, 0.7, 0.0])) == pytest.approx([0.0, 1.0, 0.0])
    assert m.to_components(np.array([0.29, 0.71, 0.0])) is None
    # Share 0: each component is pure, component weights are the data mixture.
    ident = MixtureMap.standard(D, "general", 0.0)
    assert ident.is_identity and ident.region().startswith("every data mixture")
    assert ident.data_of({"general": 0.2, "math": 0.8}) == {"general": 0.2, "math": 0.8, "code": 0.0}


def test_a_recorded_non_default_mixture():
    m = recorded()
    a = {"general": 0.2, "math": 0.5, "code": 0.3}
    # general: 0.2 + 0.3 x 0.5 + 0.5 x 0.3 = 0.5; math 0.7 x 0.5; code 0.5 x 0.3.
    assert m.data_of(a) == pytest.approx({"general": 0.5, "math": 0.35, "code": 0.15}, abs=1e-15)
    assert m.components_of(m.data_of(a)) == pytest.approx(a, abs=1e-12)
    # The general share mixes two component weights (its components hold 0.3 and 0.5 general).
    assert m.term(0) is None
    assert (m.term(1).component, m.term(1).slope) == (1, pytest.approx(0.7))
    assert m.region() == "data mixtures with general >= 0.3, code <= 0.5 inside the convex hull of the components' " \
                         "training mixtures"
    assert m.components_of({"general": 0.25, "math": 0.75, "code": 0.0}) is None  # general < 0.3
    # Inside the stated limits, yet outside the hull: code 0.35 takes a_code 0.7, math 0.3 then a_math 3/7 > 0.3.
    assert m.components_of({"general": 0.35, "math": 0.3, "code": 0.35}) is None
    assert m.components_of({"general": 0.3, "math": 0.7, "code": 0.0}) == pytest.approx({"general": 0, "math": 1, "code": 0})
    back = MixtureMap.from_dict(m.to_dict())
    np.testing.assert_array_equal(back.matrix, m.matrix)
    assert back.sources == m.sources and back.domains == m.domains
    assert m.to_dict()["components"]["math"] == {"mixture": {"general": 0.3, "math": 0.7}, "source": DECLARED}


def test_nearest_reachable_and_the_baselines():
    m = MixtureMap.standard(D, "general", 0.5)
    # The uniform data mixture has general 1/3 < 0.5: its nearest reachable one is (0.5, 0.25, 0.25).
    a, data = m.nearest_reachable(np.full(3, 1 / 3))
    np.testing.assert_allclose(data, [0.5, 0.25, 0.25], atol=1e-6)
    np.testing.assert_allclose(a, [0.0, 0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(m.to_data(a), data, atol=1e-15)  # what the weights stand for, exactly
    reachable = np.array([0.6, 0.3, 0.1])
    a, data = m.nearest_reachable(reachable)
    np.testing.assert_allclose(data, reachable, atol=1e-12)

    base = baseline_mixtures(m, {"general": 600, "math": 200, "code": 200})
    natural, uniform = base["natural"], base["uniform"]
    assert natural.reachable and natural.data_target == pytest.approx({"general": 0.6, "math": 0.2, "code": 0.2})
    assert natural.data_mixture == natural.data_target
    assert natural.component_weights == pytest.approx({"general": 0.2, "math": 0.4, "code": 0.4}, abs=1e-12)
    assert not uniform.reachable and uniform.data_target == pytest.approx({d: 1 / 3 for d in D})
    assert uniform.data_mixture == pytest.approx({"general": 0.5, "math": 0.25, "code": 0.25}, abs=1e-6)
    assert uniform.component_weights == pytest.approx({"general": 0.0, "math": 0.5, "code": 0.5}, abs=1e-6)
    assert set(baseline_mixtures(m, None)) == {"uniform"}
    # With share 0.3, uniform (general 1/3) is reachable.
    assert baseline_mixtures(MixtureMap.standard(D, "general", 0.3), None)["uniform"].reachable


def test_component_space_maps_data_bounds_exactly():
    m = MixtureMap.standard(D, "general", 0.5)
    # general <= 0.8 -> a_g <= 0.6; math >= 0.1 -> a_math >= 0.2; code <= 0.5 is no restriction.
    space = component_space(m, np.array([0.0, 0.1, 0.0]), np.array([0.8, 1.0, 0.5]))
    np.testing.assert_allclose(space.lower, [0.0, 0.2, 0.0])
    np.testing.assert_allclose(space.upper, [0.6, 1.0, 1.0])
    assert not space.has_rows
    # The recorded mixture: a bound on general is a linear row, and the box is tightened around it.
    r = recorded()
    space = component_space(r, np.array([0.6, 0.0, 0.0]), np.array([1.0, 1.0, 1.0]))
    assert space.has_rows and space.row_names == ("general",)
    a = np.array([[0.2, 0.5, 0.3], [0.6, 0.4, 0.0], [0.5, 0.0, 0.5]])  # general 0.5, 0.72, 0.75
    np.testing.assert_array_equal(space.rows_hold(a), [False, True, True])
    # Largest a_math meeting general >= 0.6 (a_g = 0, a_code = 1 - a_math): 0.3 a_m + 0.5 (1 - a_m) = 0.6 fails;
    # with a_code = 0: a_g + 0.3 a_m >= 0.6 and a_g = 1 - a_m -> a_m <= 4/7.
    assert space.upper[1] == pytest.approx(4 / 7, abs=1e-7)
    # ... of a_code (a_g = 1 - a_code): 1 - 0.5 a_code >= 0.6 -> a_code <= 0.8; and general = 0.5 + 0.5 a_g
    # - 0.2 a_math >= 0.6 (a_code eliminated) -> a_g >= 0.2.
    assert space.upper[2] == pytest.approx(0.8, abs=1e-7) and space.lower[0] == pytest.approx(0.2, abs=1e-7)


def test_an_unreachable_data_bound_names_the_region_and_the_key():
    m = MixtureMap.standard(D, "general", 0.5)
    with pytest.raises(DemixError) as err:
        component_space(m, np.zeros(3), np.array([0.4, 1.0, 1.0]), ["search.bounds.upper.general", "x", "y"])
    assert "search.bounds.upper.general" in err.value.what and "general >= 0.5" in err.value.what
    assert "[0.5, 1]" in err.value.fix
    with pytest.raises(DemixError, match="no component weights give a data mixture inside the bounds on \\['general'\\]"):
        component_space(recorded(), np.array([0.95, 0.0, 0.2]), np.ones(3))


@pytest.mark.parametrize("mixtures, match", [
    ({"general": {"general": 1.0}, "math": {"math": 1.0}}, "no training mixture for the component"),
    ({**RECORDED_MIXTURES, "math": {"general": 0.3, "books": 0.7}}, "names unknown domain"),
    ({**RECORDED_MIXTURES, "math": {"general": 0.3, "math": 0.6}}, "not non-negative token shares summing to 1"),
])
def test_bad_training_mixtures_are_clear_errors(mixtures, match):
    with pytest.raises(DemixError, match=match):
        MixtureMap.from_mixtures(D, mixtures)
