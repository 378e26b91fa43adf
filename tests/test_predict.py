"""`mlp predict`: images of any size and mode and feature rows, through a local .keras file or the
Model Registry, printed with the dataset's class names; bad inputs refused in one line.

The fast tests use small untrained Keras models built with the pipeline's own
build_mlp and the real composed configuration; the slow one predicts through the
model that `dvc repro` registered in a tiny project.
"""

from __future__ import annotations

import json
import logging

import keras
import numpy as np
import pytest
import yaml
from conftest import REPOSITORY, TINY_DATASET, make_tiny_project, run, synthetic_digits
from PIL import Image

from pipeline.cli import main
from pipeline.commands.predict import predict, read_image
from pipeline.config import ModelConfig, compose, parse_params
from pipeline.errors import DataError
from pipeline.model import build_mlp
from pipeline.paths import PARAMS_FILE

SMALL_MODEL = ModelConfig(
    hidden_units=[8], activation="relu", dropout_rate=0.0, kernel_initializer="glorot_uniform", l2_weight_decay=0.0
)


# Pima's training rows, as far as the small model's standardization knows them: mean 1..8, deviation 2.
PIMA_MEAN = np.arange(1.0, 9.0)
PIMA_TRAINING_ROWS = np.concatenate([PIMA_MEAN - 2.0, PIMA_MEAN + 2.0]).reshape(2, 8)


def make_project(directory, dataset: str) -> dict:
    """params.yaml composed for `dataset` and a small untrained model in `directory`; the dataset section."""
    text = compose([f"dataset={dataset}"], config_directory=REPOSITORY / "conf")
    (directory / PARAMS_FILE).write_text(text)
    config = parse_params(text).dataset
    training_inputs = PIMA_TRAINING_ROWS if dataset == "pima" else np.zeros((1, config.num_features), np.uint8)
    model = build_mlp(
        training_inputs, num_classes=config.num_classes, task=config.task, config=SMALL_MODEL, scaling=config.scaling
    )
    model.save(directory / "model.keras")
    return yaml.safe_load(text)["dataset"]


@pytest.fixture
def cifar_project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return make_project(tmp_path, "cifar10")


@pytest.fixture
def pima_project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return make_project(tmp_path, "pima")


def images(directory) -> list[str]:
    """PNGs and a JPEG in many sizes and modes, as a user's files come."""
    generator = np.random.default_rng(0)
    rgb = generator.integers(0, 256, size=(50, 70, 3), dtype=np.uint8)
    made = {
        "rgb.png": Image.fromarray(rgb),
        "rgba.png": Image.fromarray(rgb).convert("RGBA"),
        "grey.png": Image.fromarray(rgb[:, :, 0]),
        "palette.png": Image.fromarray(rgb).convert("P"),
        "bilevel.png": Image.fromarray(rgb[:, :, 1]).convert("1"),
        "sixteen_bit.png": Image.fromarray(rgb[:, :, 2].astype(np.uint16) * 257),
        "photo.jpg": Image.fromarray(rgb).resize((300, 200)),
    }
    for name, image in made.items():
        image.save(directory / name)
    return [str(directory / name) for name in made]


def test_images_of_any_size_and_mode_are_classified_with_class_names(cifar_project, tmp_path, capsys):
    paths = images(tmp_path)
    main(["predict", "--model", str(tmp_path / "model.keras"), *paths])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["input", "class", "probability"]
    assert len(lines) == 1 + len(paths)
    for line, path in zip(lines[1:], paths, strict=True):
        name, class_name, probability = line.split()
        assert name == path
        assert class_name in cifar_project["class_names"]
        assert 0.1 <= float(probability) <= 1.0  # the most probable of 10 classes
    # Aligned: every row's probability ends in the same column.
    assert len({len(line) for line in lines}) == 1


def test_softmax_probabilities_sum_to_one_in_the_json_output(cifar_project, tmp_path, capsys):
    paths = images(tmp_path)
    main(["predict", "--json", "--model", str(tmp_path / "model.keras"), *paths])
    predictions = json.loads(capsys.readouterr().out)
    assert [item["input"] for item in predictions] == paths
    for item in predictions:
        assert list(item["probabilities"]) == cifar_project["class_names"]
        assert sum(item["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert item["probability"] == max(item["probabilities"].values())
        assert item["class_name"] == cifar_project["class_names"][item["class_index"]]


def test_an_image_is_converted_as_the_dataset_images_are(tmp_path):
    (image,), _ = synthetic_digits(1, seed=5)
    # A user's copy: four times larger, in colour, with an alpha channel.
    Image.fromarray(image).resize((112, 112), Image.Resampling.NEAREST).convert("RGBA").save(tmp_path / "big.png")
    converted = read_image(tmp_path / "big.png", mode="L", height=28, width=28)
    assert converted.shape == (28, 28)
    assert np.abs(converted - image).mean() < 3.0  # the same picture, up to resampling
    Image.fromarray(image).save(tmp_path / "same.png")
    np.testing.assert_array_equal(read_image(tmp_path / "same.png", mode="L", height=28, width=28), image)


def test_raw_feature_rows_go_to_the_model_which_standardizes_them(pima_project, tmp_path):
    # A row equal to the training mean is all zeros after the model's standardization.
    mean = PIMA_MEAN
    (tmp_path / "rows.csv").write_text("a,b,c,d,e,f,g,h\n" + ",".join(map(str, mean)) + "\n")
    np.savez(tmp_path / "rows.npz", inputs=np.stack([mean, mean + 2.0]))
    # The dataset's own layout, with the label column, is accepted too.
    (tmp_path / "raw.csv").write_text(",".join(map(str, mean)) + ",1\n")
    model_path = str(tmp_path / "model.keras")
    predictions = predict([tmp_path / "rows.csv", tmp_path / "rows.npz", tmp_path / "raw.csv"], model=model_path)
    assert [item.input for item in predictions] == [
        f"{tmp_path / 'rows.csv'}:2",
        f"{tmp_path / 'rows.npz'}[0]",
        f"{tmp_path / 'rows.npz'}[1]",
        f"{tmp_path / 'raw.csv'}:1",
    ]
    model = keras.models.load_model(model_path)
    expected = model.predict(np.array([mean, mean + 2.0], dtype=np.float32), verbose=0)[:, 0]
    standardize = model.layers[0]
    np.testing.assert_allclose(standardize(np.array([mean, mean + 2.0])).numpy(), [np.zeros(8), np.ones(8)], atol=1e-5)
    positive = [item.probabilities["diabetes"] for item in predictions]
    np.testing.assert_allclose(positive, [expected[0], expected[0], expected[1], expected[0]], rtol=1e-5)
    for item in predictions:  # one sigmoid unit: both classes' probabilities
        assert item.probabilities["no diabetes"] + item.probabilities["diabetes"] == pytest.approx(1.0)
        assert item.class_name in pima_project["class_names"]


def test_a_wrong_feature_width_is_one_line_without_traceback(pima_project, tmp_path, caplog):
    (tmp_path / "x.csv").write_text("1,2,3,4,5,6,7\n")
    with pytest.raises(SystemExit) as exit_info, caplog.at_level(logging.ERROR):
        main(["predict", "--model", str(tmp_path / "model.keras"), str(tmp_path / "x.csv")])
    assert exit_info.value.code == 1
    assert [record.getMessage() for record in caplog.records] == [
        f"file {tmp_path / 'x.csv'} has 7 columns, the model takes 8"
    ]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("notes.png", b"not an image at all", "not an image Pillow can read"),
        ("empty.jpg", b"", "not an image Pillow can read"),
        ("rows.npz", b"PK\x03\x04 broken", "not a readable .npz file"),
        ("text.csv", b"1,2,3\n4,x,6\n", "line 2: 'x' is not a finite number"),
    ],
)
def test_unreadable_inputs_are_named_in_one_line(cifar_project, tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as error_info:
        predict([path], model=str(tmp_path / "model.keras"))
    assert str(path) in str(error_info.value)
    assert "\n" not in str(error_info.value)


def test_an_image_for_a_table_model_and_a_missing_model_are_refused(pima_project, tmp_path):
    Image.new("L", (8, 8)).save(tmp_path / "digit.png")
    with pytest.raises(DataError, match="takes 8 features, not an image"):
        predict([tmp_path / "digit.png"], model=str(tmp_path / "model.keras"))
    with pytest.raises(DataError, match="absent.keras not found: run the train stage first"):
        predict([tmp_path / "digit.png"], model=str(tmp_path / "absent.keras"))


def test_a_model_uri_without_a_store_is_one_line(cifar_project, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'absent.db'}")
    Image.new("RGB", (8, 8)).save(tmp_path / "image.png")
    with pytest.raises(SystemExit), caplog.at_level(logging.ERROR):
        main(["predict", "--model", "models:/cifar10-mlp@champion", str(tmp_path / "image.png")])
    (message,) = [record.getMessage() for record in caplog.records]
    assert message.startswith("--model models:/cifar10-mlp@champion: no MLflow store at sqlite:///")
    assert not (tmp_path / "absent.db").exists()


@pytest.mark.slow
def test_predict_through_the_registered_model_after_dvc_repro(tmp_path_factory, tiny_dataset_server):
    project = make_tiny_project(tmp_path_factory.mktemp("project"), tiny_dataset_server)
    run(["dvc", "repro"], cwd=project)
    digits, labels = synthetic_digits(20, seed=9)
    Image.fromarray(digits[0]).resize((56, 56)).save(project / "digit.png")
    result = run(["mlp", "predict", "--json", "--model", f"models:/{TINY_DATASET}-mlp/1", "digit.png"], cwd=project)
    (prediction,) = json.loads(result.stdout)
    assert prediction["input"] == "digit.png"
    assert prediction["class_name"] == str(labels[0])  # the band's position, learnt in one epoch
    assert sum(prediction["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    # The local model is the same one: the same table, without MLflow.
    table = run(["mlp", "predict", "digit.png"], cwd=project).stdout.splitlines()
    assert table[1].split()[:2] == ["digit.png", str(labels[0])]
    missing = run(["mlp", "predict", "--model", f"models:/{TINY_DATASET}-mlp/7", "digit.png"], cwd=project, check=False)
    assert missing.returncode == 1
    assert "Traceback" not in missing.stderr
    assert f"--model models:/{TINY_DATASET}-mlp/7: Model Version (name={TINY_DATASET}-mlp, version=7) not found" in (
        missing.stderr
    )
