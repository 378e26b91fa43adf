"""A corrupt intermediate file is reported as a DataError that names the file, what is
wrong with it and the command that repairs it: never a raw traceback."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
from conftest import TINY_DATASET

from pipeline.config import FileSpec
from pipeline.download import download
from pipeline.errors import DataError, DownloadError
from pipeline.evaluate import load_model
from pipeline.splits import Split, load_split, save_split

CLOSED_PORT_URL = "http://127.0.0.1:9/"  # the discard port: nothing listens there


def test_a_truncated_split_names_the_file_and_the_repair(tmp_path):
    save_split(tmp_path / "train.npz", Split(np.zeros((50, 4), np.float32), np.zeros(50, np.int64)))
    data = (tmp_path / "train.npz").read_bytes()
    (tmp_path / "train.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"train.npz is corrupt .*dvc repro --force preprocess"):
        load_split(tmp_path, "train")


def test_a_split_of_the_wrong_shape_is_refused(tmp_path):
    np.savez(tmp_path / "test.npz", inputs=np.zeros(5, np.float32), labels=np.zeros(5, np.int64))
    with pytest.raises(DataError, match=r"expected \(count, features\) and \(count,\)"):
        load_split(tmp_path, "test")


def test_a_model_file_with_a_bad_config_names_the_repair(tmp_path):
    import keras

    model = keras.Sequential([keras.Input(shape=(4,)), keras.layers.Dense(2)])
    good = tmp_path / "good.keras"
    model.save(good)
    bad = tmp_path / "model.keras"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(bad, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            target.writestr(item, b'{"class_name": 7}' if item.filename == "config.json" else data)
    with pytest.raises(DataError, match=r"model.keras is corrupt .*dvc repro --force train"):
        load_model(bad)
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"model.keras is corrupt"):
        load_model(bad)


def test_a_corrupt_raw_file_offline_says_so_first_and_what_to_do(tmp_path, tiny_dataset_server):
    spec = FileSpec(**next(iter(tiny_dataset_server.specs.values())))
    path = tmp_path / spec.name
    path.write_bytes(b"\0" * spec.size)
    with pytest.raises(DownloadError) as raised:
        download([spec], tmp_path, urls=[CLOSED_PORT_URL], dataset_name=TINY_DATASET, mirror=None)
    first_line = str(raised.value).splitlines()[0]
    assert first_line.startswith(f"{path} is corrupt (sha256 ")
    assert "run `dvc repro download`" in first_line
    assert CLOSED_PORT_URL in str(raised.value)
    assert path.exists(), "the local file is left for the user to inspect"
