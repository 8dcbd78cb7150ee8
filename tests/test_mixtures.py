import json

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


@pytest.mark.parametrize(
    "text",
    ["general=0.2,math=0.5,general=0.3", " general = 0.2 , math=0.8, general =0.2", '{"general": 0.2, "math": 0.5, "general": 0.3}'],
)
def test_a_domain_given_twice_is_refused_by_name(text):
    with pytest.raises(DemixError, match="domain 'general' is given twice"):
        parse_mixture(text)


def test_a_domain_given_twice_in_a_mixture_file_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "mix.json"
    path.write_text('{"general": 0.2, "math": 0.5, "general": 0.3}')
    with pytest.raises(DemixError, match=f"domain 'general' is given twice in the mixture file '{path}'"):
        parse_mixture(str(path))
    # A best_mixture.json given as the mixture: its weights are read the same way.
    path.write_text('{"weights": {"general": 0.5, "general": 0.5}, "unit": "token share"}')
    with pytest.raises(DemixError, match="domain 'general' is given twice"):
        parse_mixture(str(path))


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ('{"general": 0.2,', "not valid JSON"),
        ("[0.5, 0.5]", "not a mapping of domain to weight"),
        ('{"general": "lots", "math": 0.5}', "weight 'lots' for 'general' is not a number"),
        ('{"general": true}', "weight True for 'general' is not a number"),
        ('{"weights": [1]}', "not a mapping of domain to weight"),
        (b"\xff\xfe{", "cannot be read"),
    ],
)
def test_a_bad_mixture_file_is_one_error_naming_it(tmp_path, content, says):
    path = tmp_path / "mix.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DemixError, match=says) as err:
        parse_mixture(str(path))
    assert str(path) in err.value.what


def test_inline_json_weights_must_be_numbers():
    with pytest.raises(DemixError, match="weight 'x' for 'math' is not a number"):
        parse_mixture('{"general": 0.5, "math": "x"}')
    assert parse_mixture('{"general": 1, "math": 0}') == {"general": 1.0, "math": 0.0}


def test_a_best_mixture_file_gives_the_mixture_asked_for(tmp_path):
    """`-m best_mixture.json`: merge and eval take the component weights, training takes the data
    mixture; a demix < 0.2 file's `weights` are component weights and never a data mixture."""
    from demix.mixtures import parse_mixture

    new = tmp_path / "best_mixture.json"
    new.write_text(json.dumps({"data_mixture": {"general": 0.6, "math": 0.4},
                               "component_weights": {"general": 0.2, "math": 0.8}}))
    assert parse_mixture(str(new)) == {"general": 0.2, "math": 0.8}
    assert parse_mixture(str(new), kind="data") == {"general": 0.6, "math": 0.4}
    old = tmp_path / "old" / "best_mixture.json"
    old.parent.mkdir()
    old.write_text(json.dumps({"weights": {"general": 0.2, "math": 0.8}}))
    assert parse_mixture(str(old)) == {"general": 0.2, "math": 0.8}
    with pytest.raises(DemixError, match="written by demix < 0.2: its 'weights' are the component weights") as err:
        parse_mixture(str(old), kind="data")
    assert "rerun `demix search`" in err.value.fix
