"""Flattening, raw values kept, and the stratified, seeded split."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from conftest import REPOSITORY, synthetic_digits
from sklearn.model_selection import train_test_split

from pipeline.config import DatasetConfig
from pipeline.errors import DataError
from pipeline.preprocess import class_counts, preprocess, save_samples_figure
from pipeline.splits import Split


def dataset_config(template: str = "mnist", **changes) -> DatasetConfig:
    """A dataset config as conf/dataset/<template>.yaml has it, with `changes`."""
    values = yaml.safe_load((REPOSITORY / f"conf/dataset/{template}.yaml").read_text())
    return DatasetConfig.model_validate({**values, **changes})


def tiny_splits(seed=0, **options):
    train_images, train_labels = synthetic_digits(200, seed=1)
    test_images, test_labels = synthetic_digits(50, seed=2)
    train, test = Split(train_images, train_labels), Split(test_images, test_labels)
    return preprocess(train, test, dataset=dataset_config(validation_fraction=0.2, **options), seed=seed)


def test_images_stay_flat_uint8_pixels():
    """Nothing is scaled: the model's first layer does that, so the served model takes raw pixels."""
    splits = tiny_splits()
    for inputs, labels in splits.values():
        assert inputs.dtype == np.uint8
        assert inputs.shape[1] == 784
        assert labels.dtype == np.int64
    assert splits["train"][0].max() == 250


def test_a_class_with_one_example_cannot_be_split_and_the_error_says_so():
    train_images, train_labels = synthetic_digits(40, seed=1)
    train_labels[:] = 0
    train_labels[0] = 1  # class 1 has one example
    split = Split(train_images, train_labels)
    with pytest.raises(
        DataError, match="cannot split the 40 examples keeping every class on both sides.*only 1 member"
    ):
        preprocess(split, split, dataset=dataset_config(validation_fraction=0.2), seed=0)


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
    split = Split(train_images, train_labels)
    splits = preprocess(split, split, dataset=dataset_config(validation_fraction=0.0), seed=0)
    assert splits["validation"][0].shape == (0, 784)
    assert len(splits["train"][1]) == 40


def test_class_counts_per_split():
    counts = class_counts(tiny_splits(), num_classes=10)
    assert counts["train"]["0"] == 16 and counts["validation"]["9"] == 4 and counts["test"]["5"] == 5


def test_a_table_without_test_split_gets_a_stratified_held_out_test_set():
    generator = np.random.default_rng(0)
    table = generator.normal(5.0, 3.0, size=(200, 8))
    labels = np.array([0] * 130 + [1] * 70, dtype=np.uint8)
    pima = dataset_config("pima", validation_fraction=0.1, test_fraction=0.2)
    splits = preprocess(Split(table, labels), None, dataset=pima, seed=0)
    assert [len(splits[name][1]) for name in ("train", "validation", "test")] == [144, 16, 40]
    assert np.bincount(splits["test"][1]).tolist() == [26, 14]
    # The raw measurements, as float32: the model standardizes them itself.
    assert splits["train"][0].dtype == np.float32
    _, held_out = train_test_split(np.arange(200), test_size=0.2, stratify=labels, random_state=0)
    np.testing.assert_array_equal(splits["test"][0], table[held_out].astype(np.float32))


def test_samples_figures_are_pngs(tmp_path):
    images, labels = synthetic_digits(30, seed=1)
    save_samples_figure(images, labels, tmp_path / "grid.png", class_names=[str(label) for label in range(10)], seed=0)
    colour = np.random.default_rng(0).integers(0, 255, size=(30, 32, 32, 3), dtype=np.uint8)
    save_samples_figure(
        colour, labels, tmp_path / "colour.png", class_names=[str(label) for label in range(10)], seed=0
    )
    table = np.random.default_rng(0).normal(size=(30, 8))
    save_samples_figure(table, labels % 2, tmp_path / "table.png", class_names=["no", "yes"], seed=0)
    for name in ("grid.png", "colour.png", "table.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("inputs", "labels", "message"),
    [
        (np.array([[0.5, np.nan]], np.float32), np.array([1]), "holds NaN or infinite inputs"),
        (np.array([["a", "b"]]), np.array([1]), "holds <U1 inputs and int64 labels, expected numbers"),
        (np.array([[0.5, 1.0]], np.float32), np.array([0.7]), "float64 labels, expected numbers and integer"),
    ],
)
def test_a_split_of_bad_values_is_refused_with_what_is_wrong(tmp_path, inputs, labels, message):
    from pipeline.splits import load_split

    np.savez(tmp_path / "test.npz", inputs=inputs, labels=labels)
    with pytest.raises(DataError, match=message):
        load_split(tmp_path, "test")
