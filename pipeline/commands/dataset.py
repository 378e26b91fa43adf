"""`mlp dataset add`: write conf/dataset/<name>.yaml from local copies of a dataset's published files.

    mlp dataset add fashion_mnist --format idx --url https://example.org/fashion-mnist/ \\
        --file train_images=downloads/train-images-idx3-ubyte.gz ... --class-names t-shirt,trouser,...

Each --file is a path or a file:// URL. Without --url, the files' own folders become the dataset's URLs,
as file:// URLs: it then needs no network (nor mirror), and DVC's cache keeps its files once the
download stage has run (`dvc push` shares them with machines that lack the folders).

Give the publisher's files byte for byte: a repackaged copy holds the same data under other
checksums. Each file is pinned by size and sha256, or by md5 with --md5-only ROLE where the
publisher gives only an md5 (CIFAR-10). Roles: idx: train_images, train_labels, test_images,
test_labels (gzipped or not); cifar_python: archive; csv: table (numbers, the label an integer class
from 0; a header line is skipped). Files are fetched as <url><file name> (or <remote name>), the URL
http(s):// or file://; a mirror (MLP_DATA_MIRROR) holds them as <mirror>/<dataset name>/<file name>.
Shape and classes come from the files, decoded as the preprocess stage decodes them. --class-names go
in label order (default: CIFAR's batches.meta, else 0, 1, ...); --task: binary for 2 classes.
"""

import argparse
import csv
import inspect
import io
import re
import tarfile
from collections.abc import Collection
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse
from urllib.request import url2pathname

import yaml
from pydantic import ValidationError

from pipeline import decoders
from pipeline.config import FORMAT_FILES, CsvLayout, DatasetConfig, FileSpec, read_yaml
from pipeline.errors import ConfigError, DataError
from pipeline.files import file_digest, write_text
from pipeline.paths import CONFIG_DIRECTORY

CIFAR_CLASSES = 10
MAX_META_BYTES = 1 << 20  # CIFAR-10's batches.meta is 158 bytes
COMMENTS = {
    "urls": "Base URLs, tried in order; each must serve the files below byte for byte.",
    "files": "The publisher's files: sizes in bytes and checksums, computed by `mlp dataset add`.",
    "input_shape": "One example, before flattening into the MLP's input vector.",
    "validation_fraction": "Share of the training examples held out (stratified, seeded) for validation.",
    "max_train_samples": "Keep only this many training / test examples (stratified); null keeps all.",
}
MD5_COMMENT = "# The publisher gives only an md5: the download is verified by md5 and size."


class RoleValues(argparse.Action):
    def __call__(self, parser, namespace, item, option=None):
        role, _, value = item.partition("=")
        values = getattr(namespace, self.dest) or {}
        if not role or not value or role in values:
            parser.error(f"{option} {item}: expected ROLE=VALUE, each role once")
        setattr(namespace, self.dest, {**values, role: value})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    summary = "write conf/dataset/<name>.yaml from local copies of the dataset's published files"
    add = actions.add_parser(
        "add", help=summary, description=summary, epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add.add_argument("name", help="the dataset's name: -S dataset=<name>, <name>-mlp in the model registry")
    add.add_argument("--format", required=True, choices=FORMAT_FILES, dest="file_format", help="the files' layout")
    add.add_argument(
        "--url",
        action="append",
        default=[],
        dest="urls",
        metavar="BASE_URL",
        help="where the files are published: http(s)://, file:// or a folder; repeat for mirrors, in order",
    )
    add.add_argument(
        "--file", required=True, action=RoleValues, dest="files", metavar="ROLE=PATH", help="a local copy (see below)"
    )
    add.add_argument("--md5-only", action="append", default=[], metavar="ROLE", help="pin it by md5 (see below)")
    add.add_argument("--remote-name", action=RoleValues, dest="remote_names", metavar="ROLE=NAME", help="at the URLs")
    add.add_argument("--class-names", type=lambda text: [name.strip() for name in text.split(",")], metavar="A,B,...")
    add.add_argument("--task", choices=("multiclass", "binary"))
    add.add_argument("--delimiter", default=",", help="csv: the column separator (default: %(default)s)")
    add.add_argument("--label-column", type=int, help="csv: 0-based (default: the last column)")
    add.add_argument("--force", action="store_true", help="overwrite an existing conf/dataset/<name>.yaml")


def run(arguments: argparse.Namespace) -> None:
    parameters = inspect.signature(add_dataset).parameters
    dataset = add_dataset(**{key: value for key, value in vars(arguments).items() if key in parameters})
    name, path = dataset.name, CONFIG_DIRECTORY / "dataset" / f"{dataset.name}.yaml"
    if arguments.urls:
        source = f"a mirror (MLP_DATA_MIRROR) serves its files as <mirror>/{name}/<file name>"
    else:
        source = f"no --url: its files are read from {', '.join(dataset.urls)}; `dvc push` shares them once fetched"
    print(
        f"wrote {path}: input_shape {dataset.input_shape}, {dataset.num_classes} classes "
        f"({', '.join(dataset.class_names)}), task {dataset.task}\n"
        f"next: git add {path}   (DVC experiments see only committed or staged files)\n"
        f"then: dvc exp run -S dataset={name}\n"
        f"{source}"
    )


def add_dataset(
    name: str,
    *,
    file_format: str,
    urls: Collection[str] = (),
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
    """Describe the dataset whose files are `files` (role -> local path or file:// URL) and write
    conf/dataset/<name>.yaml. `urls`: base URLs (http(s)://, file://) or folders; none: the files' folders."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):  # the schema's pattern, checked before it names a file
        raise ConfigError(f"dataset name {name!r}: use letters, digits, _ and - only")
    target = config_directory / "dataset" / f"{name}.yaml"
    if target.exists() and not force:
        raise ConfigError(f"{target} exists: choose another name, or overwrite it with --force")
    roles, remote_names = FORMAT_FILES[file_format], remote_names or {}
    missing = [role for role in roles if role not in files]
    unknown = [role for role in [*files, *md5_only, *remote_names] if role not in roles]
    if missing or unknown:
        listed = [f"{label}: {', '.join(v)}" for label, v in {"missing": missing, "unknown": unknown}.items() if v]
        raise ConfigError(f"format {file_format} takes --file for each of {', '.join(roles)}; " + "; ".join(listed))
    if remote_names and not urls:
        raise ConfigError("--remote-name is a file's name at a --url: give the --url too")
    paths, specs = {role: local_path(files[role]) for role in roles}, {}
    for role, path in paths.items():
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        algorithm = "md5" if role in md5_only else "sha256"
        remote = {"remote_name": remote_names[role]} if role in remote_names else {}
        specs[role] = {
            "name": path.name,
            **remote,
            algorithm: file_digest(path, algorithm),
            "size": path.stat().st_size,
        }
    if file_format == "idx":
        described = _describe_idx(paths, class_names)
    elif file_format == "cifar_python":
        decoders.read_cifar_archive(paths["archive"], FileSpec(**specs["archive"]), CIFAR_CLASSES)
        class_names = class_names or _cifar_label_names(paths["archive"])
        described = {"input_shape": [32, 32, 3], "num_classes": CIFAR_CLASSES}
    else:
        described = _describe_csv(paths["table"], delimiter, label_column, class_names)
    num_classes, tabular = described["num_classes"], file_format == "csv"
    config = {  # in mnist.yaml's key order (pima.yaml's for csv)
        "name": name,
        "format": file_format,
        "task": task or ("binary" if num_classes == 2 else "multiclass"),
        # Without URLs, the folders of the local files: their dataset then works offline.
        "urls": [base_url(url) for url in urls or dict.fromkeys(str(path.parent) for path in paths.values())],
        "files": specs,
        **described,  # csv (for csv), input_shape, num_classes
        "class_names": class_names or [str(label) for label in range(num_classes)],
        "scaling": "standardize" if tabular else "unit_interval",
        **({"test_fraction": 0.2} if tabular else {}),  # no published test split
        "validation_fraction": 0.1,
        "max_train_samples": None,
        "max_test_samples": None,
    }
    text = render(config)
    try:
        # What the stages will read, not what we meant to write.
        dataset = DatasetConfig.model_validate(read_yaml(text, target))
    except ValidationError as error:
        problems = [
            f"dataset.{'.'.join(map(str, e['loc']))}: {e['msg']}" if e["loc"] else e["msg"] for e in error.errors()
        ]
        raise ConfigError(f"{target} would be invalid: {'; '.join(problems)}".replace("Value error, ", "")) from None
    write_text(target, text)
    return dataset


def local_path(file: str) -> Path:
    """The path of a local file given as a path or a file:// URL."""
    return Path(url2pathname(urlparse(file).path)) if file.startswith("file://") else Path(file)


def base_url(url: str) -> str:
    """`url` (a folder: as a file:// URL) ending in /: files are fetched as <base URL><file name>."""
    url = url if "://" in url else Path(url).expanduser().resolve().as_uri()
    return url if url.endswith("/") else f"{url}/"


def _describe_idx(paths: dict[str, Path], class_names: list[str] | None) -> dict:
    shape = decoders.read_idx(paths["train_images"], dimensions=3).shape[1:]
    # The stages' own checks (counts, shapes, label range); labels are bytes: at most 256 classes.
    limit = len(class_names) if class_names else 256
    labels = [
        decoders.read_idx_images_and_labels(paths[f"{split}_images"], paths[f"{split}_labels"], shape, limit).labels
        for split in ("train", "test")
    ]
    num_classes = len(class_names) if class_names else max(int(part.max(initial=0)) for part in labels) + 1
    return {"input_shape": list(shape), "num_classes": num_classes}


def _cifar_label_names(path: Path) -> list[str] | None:
    """The class names in batches.meta, read with the restricted unpickler, after read_cifar_archive; or None."""
    with tarfile.open(path, "r:gz") as archive:
        member = next((item for item in archive if PurePosixPath(item.name).name == "batches.meta"), None)
        if member is None or not member.isfile() or member.size > MAX_META_BYTES:
            return None
        data = archive.extractfile(member).read()
    try:
        meta = decoders.CifarUnpickler(io.BytesIO(data), encoding="bytes").load()  # builds only plain data
    except Exception as error:  # any failure of a hostile pickle is a bad file
        raise DataError(f"{path}:{member.name}: unreadable ({type(error).__name__}); give --class-names") from None
    names = meta.get(b"label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != CIFAR_CLASSES or not all(isinstance(n, bytes | str) for n in names):
        raise DataError(f"{path}:{member.name}: no list of {CIFAR_CLASSES} label_names; give --class-names")
    return [name.decode("utf-8", "replace") if isinstance(name, bytes) else name for name in names]


def _describe_csv(path: Path, delimiter: str, label_column: int | None, class_names: list[str] | None) -> dict:
    try:
        with path.open(encoding="utf-8", newline="") as stream:
            rows = enumerate(csv.reader(stream, delimiter=delimiter, strict=True))
            # The lines before the first row of numbers are a header.
            header_rows, first = next(((number, row) for number, row in rows if _numeric(row)), (0, None))
    except (UnicodeDecodeError, csv.Error, ValueError) as error:
        raise DataError(f"{path}: not a readable CSV table ({error})") from None
    if first is None:
        raise DataError(f"{path}: no row of numbers separated by {delimiter!r}")
    label = len(first) - 1 if label_column is None else label_column
    if not 0 <= label < len(first):
        raise ConfigError(f"--label-column {label_column}: {path} has columns 0 to {len(first) - 1}")
    features = [column for column in range(len(first)) if column != label]
    layout = CsvLayout(delimiter=delimiter, header_rows=header_rows, feature_columns=features, label_column=label)
    # The stage's own checks: every row, every label (bytes: at most 256 classes).
    _, labels = decoders.read_csv_table(path, layout, len(class_names) if class_names else 256)
    num_classes = len(class_names) if class_names else int(labels.max()) + 1
    return {"csv": layout.model_dump(), "input_shape": [len(features)], "num_classes": num_classes}


def _numeric(row: list[str]) -> bool:
    try:
        return bool([float(cell) for cell in row])
    except ValueError:
        return False


class _Dumper(yaml.SafeDumper):
    """mnist.yaml's style: list items indented under their key, "0" rather than '0'."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        return super().increase_indent(flow, False)

    def choose_scalar_style(self) -> str:
        style = super().choose_scalar_style()
        return '"' if style == "'" else style


def render(config: dict) -> str:
    """The YAML text of a dataset config, laid out as conf/dataset/mnist.yaml is, with a header saying how to run it."""
    name = config["name"]
    lines = [
        f"# {name}: written by `mlp dataset add` from local copies of its published files",
        f"# (format {config['format']}; shape and classes read from the files). Run with:",
        f"# dvc exp run -S dataset={name}",
    ]
    for key, value in config.items():
        if key in COMMENTS:
            lines.append(f"# {COMMENTS[key]}")
        # Lists of scalars on one line, as mnist.yaml writes input_shape and class_names; not urls.
        flow = None if key in ("input_shape", "class_names", "csv") else False
        text = yaml.dump(
            {key: value}, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120, default_flow_style=flow
        )
        lines.append(text.rstrip("\n").replace("\n    md5: ", f"\n    {MD5_COMMENT}\n    md5: "))
    return "\n".join(lines) + "\n"
