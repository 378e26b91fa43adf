"""`mlp dataset add`: a dataset config written from local copies of the files, pinned, described from
what the files say, in mnist.yaml's layout, valid for the schema and the composition; and a dataset
added this way trains through `dvc exp run`.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPOSITORY, make_tiny_project, run, write_tiny_cifar, write_tiny_dataset

from pipeline.cli import main
from pipeline.commands.dataset import add_dataset
from pipeline.config import compose, parse_params
from pipeline.errors import ConfigError, DataError

IDX_ROLES = ("train_images", "train_labels", "test_images", "test_labels")


def tiny_idx_files(folder) -> tuple[dict[str, str], dict[str, dict]]:
    specs = write_tiny_dataset(folder)
    return {role: str(folder / spec["name"]) for role, spec in specs.items()}, specs


def keys(path) -> list[str]:
    return list(yaml.safe_load(path.read_text()))


def test_idx_files_give_sizes_sha256s_shape_and_classes(tmp_path):
    files, specs = tiny_idx_files(tmp_path / "downloads")
    conf = tmp_path / "conf"
    add_dataset("tiny_copy", file_format="idx", urls=["https://example.org/tiny"], files=files, config_directory=conf)
    path = conf / "dataset/tiny_copy.yaml"
    written = yaml.safe_load(path.read_text())
    assert written["files"] == specs  # name, sha256 and size of each file, by role
    assert written["input_shape"] == [28, 28]
    assert written["num_classes"] == 10
    assert written["class_names"] == [str(label) for label in range(10)]
    assert (written["task"], written["scaling"]) == ("multiclass", "unit_interval")
    assert written["urls"] == ["https://example.org/tiny/"]  # a base URL: <url><file name>
    assert keys(path) == keys(REPOSITORY / "conf/dataset/mnist.yaml")
    text = path.read_text()
    assert text.startswith("# tiny_copy: written by `mlp dataset add`")
    assert "# dvc exp run -S dataset=tiny_copy\n" in text
    assert "input_shape: [28, 28]\n" in text  # mnist.yaml's layout


def test_the_command_writes_a_dataset_that_composes_into_valid_params(tmp_path, monkeypatch, capsys):
    shutil.copytree(REPOSITORY / "conf", tmp_path / "conf")
    monkeypatch.chdir(tmp_path)
    files, _ = tiny_idx_files(tmp_path / "downloads")
    names = "zero,one,two,three,four,five,six,seven,eight,nine"
    arguments = ["--format", "idx", "--url", "https://example.org/d/", "--class-names", names]
    main(["dataset", "add", "digits2", *arguments, *(f"--file={role}={path}" for role, path in files.items())])
    printed = capsys.readouterr().out
    assert "git add conf/dataset/digits2.yaml" in printed
    assert "dvc exp run -S dataset=digits2" in printed
    assert "<mirror>/digits2/<file name>" in printed
    params = parse_params(compose(["dataset=digits2"], config_directory=tmp_path / "conf"))
    assert params.dataset.class_names[9] == "nine"
    assert params.mlflow.registered_model_name == "digits2-mlp"


def test_local_files_without_a_url_are_read_from_their_folders(tmp_path):
    """Given as paths or file:// URLs, with no --url: the files' folders become file:// URLs, so the dataset
    works with no network and no mirror; the download stage reads file:// URLs as it reads http(s)://."""
    files, specs = tiny_idx_files(tmp_path / "downloads")
    elsewhere = tmp_path / "elsewhere" / specs["test_labels"]["name"]
    elsewhere.parent.mkdir()
    shutil.move(files["test_labels"], elsewhere)
    given = {**files, "train_labels": Path(files["train_labels"]).as_uri(), "test_labels": elsewhere.as_uri()}
    dataset = add_dataset("local", file_format="idx", files=given, config_directory=tmp_path / "conf")
    assert dataset.urls == [(tmp_path / "downloads").as_uri() + "/", (tmp_path / "elsewhere").as_uri() + "/"]
    assert dataset.files["test_labels"].sha256 == specs["test_labels"]["sha256"]
    folder = add_dataset(
        "folder",
        file_format="idx",
        urls=[str(tmp_path / "downloads")],
        files=files | {"test_labels": str(elsewhere)},
        config_directory=tmp_path / "conf",
    )
    assert folder.urls == [(tmp_path / "downloads").as_uri() + "/"]  # a folder given as --url: its file:// URL
    with pytest.raises(ConfigError, match="--remote-name is a file's name at a --url: give the --url too"):
        add_dataset(
            "renamed",
            file_format="idx",
            files=files | {"test_labels": str(elsewhere)},
            remote_names={"train_images": "x.gz"},
            config_directory=tmp_path / "conf",
        )


def test_an_existing_config_is_refused_unless_forced(tmp_path):
    files, _ = tiny_idx_files(tmp_path / "downloads")
    conf = tmp_path / "conf"
    arguments = {"file_format": "idx", "urls": ["https://example.org/"], "files": files, "config_directory": conf}
    add_dataset("mine", **arguments)
    with pytest.raises(ConfigError, match="mine.yaml exists: choose another name, or overwrite it with --force"):
        add_dataset("mine", **arguments)
    add_dataset("mine", **arguments, force=True, task="multiclass")


def cifar_with_meta(folder, meta: bytes):
    """The tiny CIFAR archive with a batches.meta member added."""
    spec = write_tiny_cifar(folder / "plain")["archive"]
    buffer = io.BytesIO()
    with (
        tarfile.open(folder / "plain" / spec["name"], "r:gz") as source,
        tarfile.open(fileobj=buffer, mode="w:gz") as archive,
    ):
        for member in source:
            archive.addfile(member, source.extractfile(member))
        info = tarfile.TarInfo("cifar-10-batches-py/batches.meta")
        info.size = len(meta)
        archive.addfile(info, io.BytesIO(meta))
    path = folder / "cifar-10-python.tar.gz"
    path.write_bytes(buffer.getvalue())
    return path


CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_cifar_class_names_come_from_batches_meta_and_md5_only_pins_md5(tmp_path, capsys):
    meta = pickle.dumps({b"label_names": [name.encode() for name in CIFAR_NAMES], b"num_vis": 3072}, protocol=2)
    path = cifar_with_meta(tmp_path, meta)
    conf = tmp_path / "conf"
    files = {"archive": str(path)}
    add_dataset(
        "cifar_copy",
        file_format="cifar_python",
        urls=["https://x.org/"],
        files=files,
        md5_only=["archive"],
        config_directory=conf,
    )
    written = yaml.safe_load((conf / "dataset/cifar_copy.yaml").read_text())
    assert written["class_names"] == CIFAR_NAMES
    assert (written["input_shape"], written["num_classes"]) == ([32, 32, 3], 10)
    assert written["files"]["archive"] == {
        "name": "cifar-10-python.tar.gz",
        "md5": hashlib.md5(path.read_bytes()).hexdigest(),
        "size": path.stat().st_size,
    }
    assert "# The publisher gives only an md5" in (conf / "dataset/cifar_copy.yaml").read_text()


class CreatesFile:
    """A pickle that, unpickled by pickle.load, creates a file: what a hostile archive could do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_hostile_batches_meta_is_refused_not_run(tmp_path):
    marker = tmp_path / "created-by-the-pickle"
    path = cifar_with_meta(tmp_path, pickle.dumps({b"label_names": CreatesFile(marker)}, protocol=2))
    with pytest.raises(DataError, match="batches.meta: unreadable .*give --class-names"):
        add_dataset(
            "cifar_copy",
            file_format="cifar_python",
            urls=["https://x.org/"],
            files={"archive": str(path)},
            config_directory=tmp_path / "conf",
        )
    assert not marker.exists()
    assert not (tmp_path / "conf").exists()


def test_csv_columns_header_and_classes_are_read(tmp_path):
    generator = np.random.default_rng(0)
    rows = [f"{a:.2f};{b:.2f};{c:.2f};{int(a > 0)}" for a, b, c in generator.normal(size=(60, 3))]
    table = tmp_path / "table.csv"
    table.write_text("x;y;z;label\n" + "\n".join(rows) + "\n")
    conf = tmp_path / "conf"
    dataset = add_dataset(
        "table",
        file_format="csv",
        urls=["https://x.org/"],
        files={"table": str(table)},
        delimiter=";",
        remote_names={"table": "table.data"},
        config_directory=conf,
    )
    assert dataset.csv.model_dump() == {
        "delimiter": ";",
        "header_rows": 1,
        "feature_columns": [0, 1, 2],
        "label_column": 3,
    }
    assert (dataset.input_shape, dataset.num_classes, dataset.task) == ([3], 2, "binary")
    assert (dataset.scaling, dataset.test_fraction) == ("standardize", 0.2)
    assert dataset.files["table"].remote_name == "table.data"
    assert keys(conf / "dataset/table.yaml") == keys(REPOSITORY / "conf/dataset/pima.yaml")


def test_files_the_pipeline_would_refuse_are_refused_now(tmp_path):
    files, _ = tiny_idx_files(tmp_path / "downloads")
    swapped = {**files, "train_images": files["train_labels"]}
    with pytest.raises(DataError, match="is not an IDX file of unsigned bytes with 3 dimension"):
        add_dataset("bad", file_format="idx", urls=["https://x.org/"], files=swapped, config_directory=tmp_path)
    with pytest.raises(ConfigError, match="missing: test_labels; unknown: labels"):
        incomplete = {**{role: files[role] for role in IDX_ROLES[:3]}, "labels": files["test_labels"]}
        add_dataset("bad", file_format="idx", urls=["https://x.org/"], files=incomplete, config_directory=tmp_path)
    with pytest.raises(ConfigError, match="dataset.urls.0: String should match pattern"):
        add_dataset("bad", file_format="idx", urls=["ftp://x.org/"], files=files, config_directory=tmp_path)
    with pytest.raises(ConfigError, match="use letters, digits, _ and - only"):
        add_dataset("../bad", file_format="idx", urls=["https://x.org/"], files=files, config_directory=tmp_path)
    assert not list(tmp_path.rglob("*.yaml"))


@pytest.mark.slow
def test_an_added_dataset_trains_through_dvc_exp_run(tmp_path_factory, tiny_dataset_server):
    project = make_tiny_project(tmp_path_factory.mktemp("project"), tiny_dataset_server)
    # A second dataset beside the tiny one on the same server: <server>/<name>/<file>.
    served = tiny_dataset_server.root / "second_digits"
    specs = write_tiny_dataset(served)
    url = tiny_dataset_server.base_url.replace("tiny_digits", "second_digits")
    files = [f"--file={role}={served / spec['name']}" for role, spec in specs.items()]
    result = run(["mlp", "dataset", "add", "second_digits", "--format", "idx", "--url", url, *files], cwd=project)
    assert "git add conf/dataset/second_digits.yaml" in result.stdout
    run(["git", "add", "conf/dataset/second_digits.yaml"], cwd=project)
    run(["dvc", "exp", "run", "-S", "dataset=second_digits", "-S", "train.epochs=1"], cwd=project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["dataset"]["name"] == "second_digits"
    metrics = yaml.safe_load((project / "reports/metrics.json").read_text())
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    assert (project / "data/raw/second_digits/train-images-idx3-ubyte.gz").read_bytes() == (
        served / "train-images-idx3-ubyte.gz"
    ).read_bytes()
