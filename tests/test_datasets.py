"""IDX decoding: round trips, and every corruption named with the file and the problem."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from conftest import idx_bytes

from pipeline.decoders import read_idx, read_idx_images_and_labels
from pipeline.errors import DataError
from pipeline.splits import Split, load_split, save_split


def write(path, data: bytes, compressed: bool = True):
    path.write_bytes(gzip.compress(data) if compressed else data)
    return path


def test_round_trip_of_gzipped_and_plain_idx(tmp_path):
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    np.testing.assert_array_equal(read_idx(write(tmp_path / "a.gz", idx_bytes(images)), 3), images)
    np.testing.assert_array_equal(read_idx(write(tmp_path / "a", idx_bytes(images), compressed=False), 3), images)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00\x00\x08", "too short for an IDX header"),
        (b"\x00\x00\x0d\x01" + (3).to_bytes(4, "big") + b"abc", "magic number 00000d01 is not an IDX file"),
        (b"\x00\x00\x08\x03" + (1).to_bytes(4, "big") * 3 + b"x", "is not an IDX file of unsigned bytes with 1"),
        (b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"abc", "announces shape (5,) (5 bytes of data)"),
        (b"\x00\x00\x08\x01" + (2).to_bytes(4, "big") + b"abc", "but the file holds 3 bytes of data"),
    ],
)
def test_corrupted_headers_and_payloads_are_named(tmp_path, data, message):
    path = write(tmp_path / "labels.gz", data)
    with pytest.raises(DataError) as error:
        read_idx(path, dimensions=1)
    assert str(path) in str(error.value)
    assert message in str(error.value)


def test_a_huge_announced_shape_is_refused_without_allocating(tmp_path):
    header = b"\x00\x00\x08\x03" + (2**31 - 1).to_bytes(4, "big") * 3
    with pytest.raises(DataError, match="header announces shape"):
        read_idx(write(tmp_path / "images.gz", header + b"\x00" * 10), dimensions=3)


def test_truncated_gzip_is_named(tmp_path):
    path = tmp_path / "images.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((3, 28, 28), np.uint8)))[:-12])
    with pytest.raises(DataError, match="cannot be decompressed"):
        read_idx(path, dimensions=3)


def test_images_and_labels_must_agree(tmp_path):
    images = write(tmp_path / "images.gz", idx_bytes(np.zeros((3, 28, 28), np.uint8)))
    two_labels = write(tmp_path / "two.gz", idx_bytes(np.array([1, 2], np.uint8)))
    with pytest.raises(DataError, match="holds 3 images but .* holds 2 labels"):
        read_idx_images_and_labels(images, two_labels, (28, 28), 10)
    bad_label = write(tmp_path / "bad.gz", idx_bytes(np.array([1, 2, 10], np.uint8)))
    with pytest.raises(DataError, match="label 10 found, expected labels 0 to 9"):
        read_idx_images_and_labels(images, bad_label, (28, 28), 10)
    with pytest.raises(DataError, match=r"images are \(28, 28\), expected \(32, 32\)"):
        read_idx_images_and_labels(images, bad_label, (32, 32), 10)


def test_missing_raw_file_points_to_the_download_stage(tmp_path):
    with pytest.raises(DataError, match="run the download stage first"):
        read_idx(tmp_path / "absent.gz", dimensions=1)


def test_split_round_trip_and_bad_split_file(tmp_path):
    inputs, labels = np.random.rand(4, 784).astype(np.float32), np.arange(4)
    save_split(tmp_path / "train.npz", Split(inputs, labels))
    loaded_inputs, loaded_labels = load_split(tmp_path, "train")
    np.testing.assert_array_equal(loaded_inputs, inputs)
    np.testing.assert_array_equal(loaded_labels, labels)
    (tmp_path / "test.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"test.npz is corrupt .*dvc repro --force preprocess"):
        load_split(tmp_path, "test")
    with pytest.raises(DataError, match="run the preprocess stage first"):
        load_split(tmp_path, "validation")
