"""`mlp dataset add`: write conf/dataset/<name>.yaml from local copies of a dataset's published files.

    mlp dataset add fashion_mnist --format idx --url https://example.org/fashion-mnist/ \\
        --file train_images=downloads/train-images-idx3-ubyte.gz ... \\
        --class-names t-shirt,trouser,pullover,dress,coat,sandal,shirt,sneaker,bag,boot

Pins each file by its size and sha256 (or md5), reads from the files what their
format tells (IDX: the image shape and the number of classes; CIFAR: the class
names in batches.meta; CSV: the columns and the number of classes), decodes every
file with the pipeline's own decoders, validates the result with the dataset
schema and writes it in conf/dataset/mnist.yaml's layout.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Collection
from pathlib import Path

import yaml
from pydantic import ValidationError

from pipeline.checksums import file_digest
from pipeline.commands.dataset.describe import describe
from pipeline.commands.dataset.render import render
from pipeline.dataset_config import FORMAT_FILES, DatasetConfig
from pipeline.errors import ConfigError, DataError
from pipeline.files import write_text
from pipeline.paths import CONFIG_DIRECTORY

# The schema's pattern for dataset.name, checked before the name becomes a file name.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
DEFAULT_TEST_FRACTION = 0.2  # csv only: no published test split
DEFAULT_VALIDATION_FRACTION = 0.1

HELP = """Pin the publisher's files, as downloaded from the URLs, byte for byte: a
repackaged copy (unzipped, re-gzipped, re-tarred) holds the same data under other
checksums, and the download stage would refuse the publisher's file.

Each file is pinned by size and sha256. --md5-only ROLE pins it by size and md5
instead: for a file whose publisher gives only an md5 (CIFAR-10's archive), so
that the pin can be checked against the published value; sha256 is preferred.

Roles: idx: train_images, train_labels, test_images, test_labels (gzipped or
not); cifar_python: archive; csv: table (numbers only, the label column an
integer class from 0; a header line is skipped). The files are fetched as
<url><file name>, or <url><remote name> with --remote-name; a mirror
(MLP_DATA_MIRROR) holds them as <mirror>/<dataset name>/<file name>.

--task defaults to binary (one sigmoid unit) for two classes, multiclass
otherwise. Class names default to CIFAR's batches.meta, else to 0, 1, ..."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    summary = "write conf/dataset/<name>.yaml from local copies of the dataset's published files"
    add = actions.add_parser(
        "add", help=summary, description=summary, epilog=HELP, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add.add_argument("name", help="the dataset's name: -S dataset=<name>, <name>-mlp in the model registry")
    add.add_argument(
        "--format", required=True, choices=list(FORMAT_FILES), dest="file_format", help="how the files are laid out"
    )
    add.add_argument(
        "--url",
        required=True,
        action="append",
        dest="urls",
        metavar="BASE_URL",
        help="where the publisher serves the files, as <url><file name>; repeat for mirrors, tried in order",
    )
    add.add_argument(
        "--file",
        required=True,
        action="append",
        dest="files",
        metavar="ROLE=PATH",
        help="a local copy of the file of each role (see below)",
    )
    add.add_argument("--md5-only", action="append", default=[], metavar="ROLE", help="pin by md5 (see below)")
    add.add_argument("--remote-name", action="append", default=[], metavar="ROLE=NAME", help="the name at the URLs")
    add.add_argument("--class-names", type=_names, metavar="A,B,...", help="one per class, in label order")
    add.add_argument("--task", choices=("multiclass", "binary"))
    add.add_argument("--delimiter", default=",", help="csv: the column separator (default: %(default)s)")
    add.add_argument("--label-column", type=int, help="csv: 0-based (default: the last column)")
    add.add_argument("--force", action="store_true", help="overwrite an existing conf/dataset/<name>.yaml")


def run(arguments: argparse.Namespace) -> None:
    dataset = add_dataset(
        arguments.name,
        file_format=arguments.file_format,
        urls=arguments.urls,
        files=_role_values(arguments.files, "--file", arguments.file_format),
        md5_only=arguments.md5_only,
        remote_names=_role_values(arguments.remote_name, "--remote-name", arguments.file_format),
        class_names=arguments.class_names,
        task=arguments.task,
        delimiter=arguments.delimiter,
        label_column=arguments.label_column,
        force=arguments.force,
    )
    path, name = config_path(dataset.name), dataset.name
    print(
        f"wrote {path}: input_shape {dataset.input_shape}, {dataset.num_classes} classes "
        f"({', '.join(dataset.class_names)}), task {dataset.task}\n"
        f"next: git add {path}   (DVC experiments see only committed or staged files)\n"
        f"then: dvc exp run -S dataset={name}\n"
        f"a mirror (MLP_DATA_MIRROR) serves its files as <mirror>/{name}/<file name>"
    )


def add_dataset(
    name: str,
    *,
    file_format: str,
    urls: list[str],
    files: dict[str, str],
    md5_only: Collection[str] = (),
    remote_names: dict[str, str] | None = None,
    class_names: list[str] | None = None,
    task: str | None = None,
    delimiter: str = ",",
    label_column: int | None = None,
    force: bool = False,
    config_directory: Path = CONFIG_DIRECTORY,
) -> DatasetConfig:
    """Describe the dataset whose files are `files` (role -> local path) and write conf/dataset/<name>.yaml."""
    if not NAME_PATTERN.match(name):
        raise ConfigError(f"dataset name {name!r}: use letters, digits, _ and - only")
    target = config_path(name, config_directory)
    if target.exists() and not force:
        raise ConfigError(f"{target} exists: choose another name, or overwrite it with --force")
    roles = FORMAT_FILES[file_format]
    missing = [role for role in roles if role not in files]
    unknown = [role for role in [*files, *md5_only, *(remote_names or {})] if role not in roles]
    if missing or unknown:
        raise ConfigError(
            f"format {file_format} takes --file for each of {', '.join(roles)}; " + _listed(missing, unknown)
        )
    paths = {role: Path(files[role]) for role in roles}
    for path in paths.values():
        if not path.is_file():
            raise DataError(f"{path}: no such file")
    specs = {
        role: _file_spec(paths[role], md5=role in md5_only, remote_name=(remote_names or {}).get(role))
        for role in roles
    }
    described = describe(
        file_format, paths, specs, class_names=class_names, delimiter=delimiter, label_column=label_column
    )
    config = _config(name, file_format, urls=urls, specs=specs, described=described, task=task)
    text = render(config)
    try:
        # What the stages will read, not what we meant to write.
        dataset = DatasetConfig.model_validate(yaml.safe_load(text))
    except ValidationError as error:
        problems = "; ".join(_problem(item) for item in error.errors())
        raise ConfigError(f"{target} would be invalid: {problems}") from None
    write_text(target, text)
    return dataset


def config_path(name: str, config_directory: Path = CONFIG_DIRECTORY) -> Path:
    return config_directory / "dataset" / f"{name}.yaml"


def _file_spec(path: Path, *, md5: bool, remote_name: str | None) -> dict:
    spec = {"name": path.name}
    if remote_name:
        spec["remote_name"] = remote_name
    algorithm = "md5" if md5 else "sha256"
    spec[algorithm] = file_digest(path, algorithm)
    spec["size"] = path.stat().st_size
    return spec


def _config(name: str, file_format: str, *, urls: list[str], specs: dict, described: dict, task: str | None) -> dict:
    """The dataset config, in conf/dataset/mnist.yaml's key order (pima.yaml's for csv)."""
    num_classes = described["num_classes"]
    config = {
        "name": name,
        "format": file_format,
        "task": task or ("binary" if num_classes == 2 else "multiclass"),
        # The download stage fetches <base URL><file name>.
        "urls": [url if url.endswith("/") else f"{url}/" for url in urls],
        "files": specs,
    }
    if "csv" in described:
        config["csv"] = described["csv"]
    config["input_shape"] = described["input_shape"]
    config["num_classes"] = num_classes
    config["class_names"] = described["class_names"] or [str(label) for label in range(num_classes)]
    config["scaling"] = "standardize" if file_format == "csv" else "unit_interval"
    if file_format == "csv":
        config["test_fraction"] = DEFAULT_TEST_FRACTION
    config["validation_fraction"] = DEFAULT_VALIDATION_FRACTION
    config["max_train_samples"] = None
    config["max_test_samples"] = None
    return config


def _problem(item: dict) -> str:
    message = item["msg"].removeprefix("Value error, ")
    return f"dataset.{'.'.join(map(str, item['loc']))}: {message}" if item["loc"] else message


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",")]


def _role_values(items: list[str], option: str, file_format: str) -> dict[str, str]:
    values = {}
    for item in items:
        role, separator, value = item.partition("=")
        if not separator or not value:
            raise ConfigError(
                f"{option} {item}: expected ROLE=VALUE, roles of {file_format}: {', '.join(FORMAT_FILES[file_format])}"
            )
        if role in values:
            raise ConfigError(f"{option} {role} is given twice")
        values[role] = value
    return values


def _listed(missing: list[str], unknown: list[str]) -> str:
    parts = ([f"missing: {', '.join(missing)}"] if missing else []) + (
        [f"unknown: {', '.join(unknown)}"] if unknown else []
    )
    return "; ".join(parts)
