"""Scaling, flattening and the stratified, seeded split."""

from __future__ import annotations

import numpy as np
from conftest import synthetic_digits

from pipeline.preprocess import class_counts, preprocess, save_sample_grid


def tiny_splits(seed=0, **options):
    train_images, train_labels = synthetic_digits(200, seed=1)
    test_images, test_labels = synthetic_digits(50, seed=2)
    return preprocess(train_images, train_labels, test_images, test_labels, 0.2, seed, **options)


def test_inputs_are_flat_float32_in_unit_range():
    splits = tiny_splits()
    for inputs, labels in splits.values():
        assert inputs.dtype == np.float32
        assert inputs.shape[1] == 784
        assert inputs.min() >= 0.0 and inputs.max() <= 1.0
        assert labels.dtype == np.int64
    assert splits["train"][0].max() == np.float32(250 / 255)


def test_validation_is_a_stratified_share_of_training_and_test_is_untouched():
    splits = tiny_splits()
    assert len(splits["validation"][1]) == 40 and len(splits["train"][1]) == 160
    assert set(np.bincount(splits["validation"][1])) == {4}  # 20 per class in 200 -> 4 each
    _, test_labels = synthetic_digits(50, seed=2)
    np.testing.assert_array_equal(splits["test"][1], test_labels)


def test_split_is_seeded():
    first, again, other = tiny_splits(seed=3), tiny_splits(seed=3), tiny_splits(seed=4)
    np.testing.assert_array_equal(first["validation"][0], again["validation"][0])
    assert not np.array_equal(first["validation"][0], other["validation"][0])


def test_subsets_are_stratified():
    splits = tiny_splits(max_train_samples=100, max_test_samples=20)
    assert len(splits["train"][1]) + len(splits["validation"][1]) == 100
    assert set(np.bincount(splits["test"][1])) == {2}


def test_no_validation_split_leaves_an_empty_validation_set():
    train_images, train_labels = synthetic_digits(40, seed=1)
    splits = preprocess(train_images, train_labels, train_images, train_labels, 0.0, 0)
    assert splits["validation"][0].shape == (0, 784)
    assert len(splits["train"][1]) == 40


def test_class_counts_per_split():
    counts = class_counts(tiny_splits(), num_classes=10)
    assert counts["train"]["0"] == 16 and counts["validation"]["9"] == 4 and counts["test"]["5"] == 5


def test_sample_grid_is_a_png(tmp_path):
    images, labels = synthetic_digits(30, seed=1)
    save_sample_grid(images, labels, tmp_path / "grid.png", seed=0)
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
