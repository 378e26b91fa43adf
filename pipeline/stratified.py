"""Stratified, seeded splits: the rows scikit-learn's `train_test_split(..., stratify=labels,
random_state=seed)` puts on each side, without importing scikit-learn.

Importing sklearn.model_selection costs the preprocess stage about a second per
run, most of its start-up. This is StratifiedShuffleSplit's algorithm with the
same draws from the same NumPy RandomState in the same order, so every split
(and every weight trained on it) is the one scikit-learn gives;
tests/test_stratified.py compares the two.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.errors import DataError


def stratified_split(
    labels: np.ndarray, *, seed: int, test_fraction: float | None = None, train_count: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows) of a split keeping each class's share on both sides: test_fraction of
    the rows (rounded up) held out, or train_count rows kept and the rest held out."""
    count = len(labels)
    test_count = math.ceil(test_fraction * count) if test_fraction is not None else count - train_count
    train_count = count - test_count if train_count is None else train_count
    classes, class_of_row, class_counts = np.unique(labels, return_inverse=True, return_counts=True)
    if class_counts.min() < 2:
        raise DataError(
            f"class {classes[class_counts.argmin()]} has {class_counts.min()} example: "
            "a stratified split needs at least 2 examples of every class"
        )
    if min(train_count, test_count) < len(classes):
        raise DataError(
            f"a split of {count} rows into {train_count} and {test_count} leaves a side with fewer rows "
            f"than the {len(classes)} classes: use a larger dataset or share"
        )
    rows_of_class = np.split(np.argsort(class_of_row, kind="stable"), np.cumsum(class_counts)[:-1])
    random = np.random.RandomState(seed)
    train_per_class = approximate_mode(class_counts, train_count, random)
    test_per_class = approximate_mode(class_counts - train_per_class, test_count, random)
    train, test = [], []
    for rows, train_size, test_size in zip(rows_of_class, train_per_class, test_per_class, strict=True):
        shuffled = rows[random.permutation(len(rows))]
        train.append(shuffled[:train_size])
        test.append(shuffled[train_size : train_size + test_size])
    return random.permutation(np.concatenate(train)), random.permutation(np.concatenate(test))


def approximate_mode(class_counts: np.ndarray, draws: int, random: np.random.RandomState) -> np.ndarray:
    """How many of `draws` rows to take from each class: each class's share rounded down, then one
    more for the classes with the largest remainders, ties broken at random."""
    continuous = class_counts / class_counts.sum() * draws
    floored = np.floor(continuous)
    missing = int(draws - floored.sum())
    remainder = continuous - floored
    for value in np.sort(np.unique(remainder))[::-1]:
        if missing == 0:
            break
        (tied,) = np.where(remainder == value)
        chosen = random.choice(tied, size=min(len(tied), missing), replace=False)
        floored[chosen] += 1
        missing -= len(chosen)
    return floored.astype(int)
