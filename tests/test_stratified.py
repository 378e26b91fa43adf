"""The stratified split: the same rows on each side as scikit-learn's train_test_split."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from pipeline.errors import DataError
from pipeline.stratified import stratified_split

LABELS = {
    "ten balanced classes": np.repeat(np.arange(10), 30),
    "ten uneven classes": np.random.default_rng(0).integers(0, 10, size=997),
    "two classes, 500 and 268 (Pima)": np.array([0] * 500 + [1] * 268)[np.random.default_rng(1).permutation(768)],
    "three equal classes (tied remainders)": np.random.default_rng(2).permutation(np.repeat([0, 1, 2], 11)),
}


@pytest.mark.parametrize("labels", LABELS.values(), ids=LABELS.keys())
@pytest.mark.parametrize("seed", [0, 42, 7])
@pytest.mark.parametrize("test_fraction", [0.1, 0.2, 0.5])
def test_a_held_out_fraction_is_the_one_scikit_learn_holds_out(labels, seed, test_fraction):
    rows = np.arange(len(labels))
    expected_train, expected_test = train_test_split(rows, test_size=test_fraction, stratify=labels, random_state=seed)
    train, test = stratified_split(labels, seed=seed, test_fraction=test_fraction)
    np.testing.assert_array_equal(train, expected_train)
    np.testing.assert_array_equal(test, expected_test)


@pytest.mark.parametrize("labels", LABELS.values(), ids=LABELS.keys())
def test_a_subset_of_a_count_is_the_one_scikit_learn_keeps(labels):
    rows = np.arange(len(labels))
    expected, _ = train_test_split(rows, train_size=12, stratify=labels, random_state=3)
    train, rest = stratified_split(labels, seed=3, train_count=12)
    np.testing.assert_array_equal(train, expected)
    assert sorted([*train, *rest]) == list(rows)


def test_a_class_with_one_example_cannot_be_stratified():
    with pytest.raises(DataError, match="class 2 has 1 example: a stratified split needs at least 2"):
        stratified_split(np.array([0, 0, 1, 1, 2]), seed=0, test_fraction=0.5)


def test_a_side_smaller_than_the_classes_is_refused():
    with pytest.raises(DataError, match="fewer rows than the 3 classes"):
        stratified_split(np.repeat([0, 1, 2], 10), seed=0, test_fraction=0.05)
