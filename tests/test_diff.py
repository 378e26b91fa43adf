"""`mlp diff`: McNemar's exact test on paired predictions, and the verdict line."""

from __future__ import annotations

import pytest

from pipeline.commands.diff import changed, mcnemar, verdict
from pipeline.errors import PipelineError


def pairs(only_a: int, only_b: int, both: int, neither: int) -> tuple[list, list]:
    """Paired (actual, predicted) rows with the given contingency table."""
    right, wrong = ("1", "1"), ("1", "0")
    a = [right] * only_a + [wrong] * only_b + [right] * both + [wrong] * neither
    b = [wrong] * only_a + [right] * only_b + [right] * both + [wrong] * neither
    return a, b


def test_the_exact_p_value_of_a_textbook_table():
    # 2 examples only A gets right, 8 only B: p = 2 * P(X <= 2), X ~ Binomial(10, 1/2) = 2 * 56 / 1024.
    test = mcnemar(*pairs(only_a=2, only_b=8, both=80, neither=10))
    assert (test["only_a_right"], test["only_b_right"], test["examples"]) == (2, 8, 100)
    assert test["p_value"] == pytest.approx(112 / 1024)


def test_a_run_against_itself_differs_in_nothing():
    predictions, _ = pairs(only_a=0, only_b=0, both=7, neither=3)
    test = mcnemar(predictions, predictions)
    assert test["p_value"] == 1.0 and test["only_a_right"] == test["only_b_right"] == 0
    comparison = {"metrics": {"test_accuracy": {"delta": 0.0}}, "significance": test, "seed_spread": None}
    assert verdict(comparison, same_test_set=True).startswith("not distinguishable from seed noise")


def test_predictions_of_other_test_examples_do_not_pair():
    with pytest.raises(PipelineError, match="do not pair"):
        mcnemar([("1", "1"), ("2", "2")], [("2", "2"), ("1", "1")])


def test_the_verdict_weighs_the_p_value_and_the_seed_spread():
    significant = {"p_value": 0.004}
    comparison = {"metrics": {"test_accuracy": {"delta": 0.0031}}, "significance": significant, "seed_spread": 0.0012}
    assert verdict(comparison, same_test_set=True) == (
        "B is better than A by 0.31 points (McNemar p = 0.004; beyond the seed spread of 0.12)"
    )
    comparison["seed_spread"] = 0.005  # within what changing only the seed moves it
    assert verdict(comparison, same_test_set=True).startswith("not distinguishable from seed noise")
    assert "different test sets" in verdict(comparison, same_test_set=False)


def test_only_changed_keys_are_shown():
    assert changed({"a": "1", "b": "2"}, {"a": "1", "b": "3", "c": "4"}) == {
        "b": {"a": "2", "b": "3"},
        "c": {"a": None, "b": "4"},
    }
