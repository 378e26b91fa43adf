"""`mlp predict`: images of any size and mode and feature rows, through a local .keras file or the
Model Registry, printed with the dataset's class names; drawings prepared as MNIST's digits were;
bad inputs refused in one line; --help and argument errors without loading TensorFlow.

The fast tests use small untrained Keras models built with the pipeline's own
build_mlp and the real composed configuration; the slow ones predict through the
model that `dvc repro` registered in a tiny project. Drawn digits are read with the
default model that `make repro` trained on the real MNIST files (skipped before it).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import yaml
from conftest import REPOSITORY, TINY_DATASET, make_tiny_project, run, synthetic_digits
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from pipeline.cli import main
from pipeline.commands.predict import as_mnist_digit, open_image, predict, read_inputs, resize
from pipeline.config import ModelConfig, compose, parse_params
from pipeline.errors import DataError
from pipeline.model import build_mlp
from pipeline.paths import PARAMS_FILE

# The default run's model, which `make repro` trains on the real MNIST files.
DEFAULT_MODEL = REPOSITORY / "data/model/model.keras"
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


def test_an_image_is_resized_whole_for_a_dataset_of_photos(tmp_path):
    generator = np.random.default_rng(5)
    image = generator.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    # A user's copy of a CIFAR-10 image: four times larger, with an alpha channel.
    Image.fromarray(image).resize((128, 128), Image.Resampling.NEAREST).convert("RGBA").save(tmp_path / "big.png")
    converted = resize(open_image(tmp_path / "big.png", mode="RGB"), height=32, width=32)
    np.testing.assert_allclose(converted, image, atol=1)


def draw(size: tuple[int, int], ink: str, paper: str, *strokes: tuple) -> Image.Image:
    """A drawing on a (width, height) canvas: ("line", points) and ("ellipse", box) strokes 22 pixels thick."""
    image = Image.new("L", size, paper)
    pen = ImageDraw.Draw(image)
    for shape, where in strokes:
        getattr(pen, shape)(where, **({"fill": ink} if shape == "line" else {"outline": ink}), width=22)
    return image


SEVEN = (("line", (80, 60, 220, 60)), ("line", (215, 60, 130, 260)))
ONE = (("line", (160, 40, 140, 260)),)
ZERO = (("ellipse", (90, 50, 210, 250)),)


def test_a_drawing_is_prepared_as_mnist_digits_were(tmp_path):
    # A 7 in a corner of a wide canvas, black on white: cropped, fitted in 20x20, centred by its centre of mass.
    canvas = Image.new("L", (640, 480), "white")
    canvas.paste(draw((300, 300), "black", "white", *SEVEN), (340, 180))
    digit = as_mnist_digit(canvas)
    assert digit.shape == (28, 28) and digit.max() == 255 and digit[0].max() == digit[:, 0].max() == 0
    rows, columns = np.nonzero(digit)
    assert rows.max() - rows.min() + 1 == 20  # the taller side fills the box
    assert columns.max() - columns.min() + 1 < 20  # the aspect ratio is kept
    assert np.allclose(ndimage.center_of_mass(digit), (14, 14), atol=0.5)
    # White on black, and dark ink on a photographed grey sheet, are the same digit.
    np.testing.assert_array_equal(as_mnist_digit(draw((300, 300), "white", "black", *SEVEN)), digit)
    np.testing.assert_array_equal(as_mnist_digit(draw((300, 300), "#3c3c3c", "#b4b4b4", *SEVEN)), digit)
    # --background overrides the border's say: a light background read as dark leaves no ink on the paper.
    with pytest.raises(DataError, match="no drawing found"):
        as_mnist_digit(draw((300, 300), "black", "white", *SEVEN), background="dark")


def test_a_drawing_on_a_transparent_canvas_has_its_transparent_pixels_as_paper(tmp_path):
    for ink in ("black", "white"):
        stroke = draw((300, 300), "white", "black", *SEVEN)  # where the pen went
        canvas = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
        canvas.paste(Image.new("RGBA", (300, 300), ink), mask=stroke)
        canvas.save(tmp_path / f"{ink}_pen.png")
        digit = as_mnist_digit(open_image(tmp_path / f"{ink}_pen.png", mode="L"))
        np.testing.assert_array_equal(digit, as_mnist_digit(draw((300, 300), "white", "black", *SEVEN)))


def test_an_image_of_the_dataset_size_is_taken_as_it_is_up_to_its_colouring(tmp_path):
    (image,), _ = synthetic_digits(1, seed=5)
    Image.fromarray(image).save(tmp_path / "same.png")
    Image.fromarray(255 - image).save(tmp_path / "inverted.png")
    for name in ("same.png", "inverted.png"):
        np.testing.assert_array_equal(as_mnist_digit(open_image(tmp_path / name, mode="L")), image)


def test_a_blank_drawing_is_refused_in_one_line(tmp_path):
    text = compose(["dataset=mnist"], config_directory=REPOSITORY / "conf")
    Image.new("L", (200, 200), "white").save(tmp_path / "blank.png")
    with pytest.raises(DataError, match=r"blank.png: no drawing found, the image is one colour$"):
        read_inputs(tmp_path / "blank.png", dataset=parse_params(text).dataset)


@pytest.mark.parametrize(
    ("arguments", "status", "last_line"),
    [
        (["predict", "--help"], 0, "the units of the dataset's raw files: the model scales its inputs itself."),
        (
            ["predict", "--background", "purple", "digit.png"],
            2,
            "invalid choice: 'purple' (choose from 'auto', 'dark', 'light')",
        ),
        (["predict", "absent.png"], 1, "absent.png: no such file"),
        (["serve", "--help"], 0, "adds a Python traceback. Ctrl-C stops it."),
        (["serve", "--port", "http"], 2, "argument --port: invalid int value: 'http'"),
    ],
    ids=["help", "bad-choice", "missing-input", "serve-help", "serve-bad-port"],
)
def test_help_and_argument_errors_answer_without_loading_tensorflow(tmp_path, arguments, status, last_line):
    # `mlp`, then which of the slow libraries the process loaded, as the last line on stderr.
    command = f"""if True:
        import sys
        from pipeline.cli import main
        try:
            main(sys.argv[1:])
        finally:
            assert "pipeline.commands.{arguments[0]}" in sys.modules
            print("loaded:", sorted({{"tensorflow", "keras", "mlflow"}} & set(sys.modules)), file=sys.stderr)
    """
    result = subprocess.run(
        [sys.executable, "-c", command, *arguments],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPOSITORY)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == status
    *said, loaded = result.stderr.splitlines()
    assert loaded == "loaded: []"
    assert (said or result.stdout.splitlines())[-1].endswith(last_line)
    assert "Traceback" not in result.stderr


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
    # At the dataset's size, the image is taken as it is: the band stays where it tells the class.
    Image.fromarray(digits[0]).save(project / "digit.png")
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


@pytest.mark.skipif(not DEFAULT_MODEL.is_file(), reason="`make repro` trains the default model on the real MNIST files")
def test_the_default_model_reads_digits_drawn_in_either_colouring(tmp_path):
    expected = {}
    for ink, paper in (("black", "white"), ("white", "black")):
        for label, strokes in (("0", ZERO), ("1", ONE), ("7", SEVEN)):
            draw((300, 300), ink, paper, *strokes).save(tmp_path / f"drawn_{label}_on_{paper}.png")
            expected[str(tmp_path / f"drawn_{label}_on_{paper}.png")] = label
        # Pillow's own font, large. Its 1, 6 and 9 are far from handwritten ones (the model reads 7, 0 and 8).
        for label in "0234578":
            image = Image.new("L", (240, 300), paper)
            font = ImageFont.load_default(size=160)
            ImageDraw.Draw(image).text((120, 150), label, fill=ink, font=font, anchor="mm")
            image.save(tmp_path / f"typed_{label}_on_{paper}.png")
            expected[str(tmp_path / f"typed_{label}_on_{paper}.png")] = label
    # In the repository: its params.yaml names the dataset the model was trained on.
    result = run(["mlp", "predict", "--json", *expected], cwd=REPOSITORY)
    predicted = {item["input"]: item["class_name"] for item in json.loads(result.stdout)}
    assert predicted == expected
