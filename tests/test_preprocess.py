"""Scaling, flattening and the stratified, seeded split."""

from __future__ import annotations

import numpy as np
import yaml
from conftest import REPOSITORY, synthetic_digits

from pipeline.dataset_config import DatasetConfig
from pipeline.decoders import RawData
from pipeline.preprocess import class_counts, preprocess, save_samples_figure


def dataset_config(template: str = "mnist", **changes) -> DatasetConfig:
    """A dataset config as conf/dataset/<template>.yaml has it, with `changes`."""
    values = yaml.safe_load((REPOSITORY / f"conf/dataset/{template}.yaml").read_text())
    return DatasetConfig.model_validate({**values, **changes})


def tiny_splits(seed=0, **options):
    train_images, train_labels = synthetic_digits(200, seed=1)
    test_images, test_labels = synthetic_digits(50, seed=2)
    raw = RawData(train_images, train_labels, test_images, test_labels)
    splits, _ = preprocess(raw, dataset=dataset_config(validation_fraction=0.2, **options), seed=seed)
    return splits


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
    raw = RawData(train_images, train_labels, train_images, train_labels)
    splits, _ = preprocess(raw, dataset=dataset_config(validation_fraction=0.0), seed=0)
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
    splits, statistics = preprocess(RawData(table, labels, None, None), dataset=pima, seed=0)
    assert [len(splits[name][1]) for name in ("train", "validation", "test")] == [144, 16, 40]
    assert np.bincount(splits["test"][1]).tolist() == [26, 14]
    train_inputs = splits["train"][0]
    np.testing.assert_allclose(train_inputs.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(train_inputs.std(axis=0), 1.0, atol=1e-5)
    # Statistics from the training split only, applied unchanged to the others.
    assert len(statistics["mean"]) == 8
    assert not np.allclose(splits["test"][0].mean(axis=0), 0.0, atol=1e-5)


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
