import numpy as np
import pytest

from demix.errors import DemixError
from demix.mixtures import mixture_key, mixtures_to_rows, parse_mixture, prior_weights, rows_to_mixtures, validate_mixture


def test_validation_helpers_unchanged():
    assert validate_mixture({"a": 0.25, "b": 0.75}, ["a", "b", "c"]) == {"a": 0.25, "b": 0.75, "c": 0.0}
    assert parse_mixture("a=0.5,b=0.5") == {"a": 0.5, "b": 0.5}
    assert mixture_key({"a": 0.5, "b": 0.5, "c": 0.0}) == mixture_key({"b": 0.5, "a": 0.5})


def test_prior_weights_are_token_shares_or_uniform():
    assert prior_weights(["a", "b"], "tokens", {"a": 1, "b": 3}).tolist() == [0.25, 0.75]
    assert prior_weights(["a", "b", "c", "d"], "uniform").tolist() == [0.25] * 4
    with pytest.raises(DemixError, match="no token count for domain"):
        prior_weights(["a", "b"], "tokens", {"a": 1})


def test_rows_and_dicts_round_trip_with_missing_domains_as_zero():
    rows = mixtures_to_rows(["a", "b", "c"], [{"a": 0.5, "c": 0.5}, {"b": 1.0}])
    assert rows.tolist() == [[0.5, 0.0, 0.5], [0.0, 1.0, 0.0]]
    assert rows_to_mixtures(["a", "b", "c"], rows)[0] == {"a": 0.5, "b": 0.0, "c": 0.5}
    assert np.array_equal(mixtures_to_rows(["a"], []), np.zeros((0, 1)))
