"""Shared fixtures: a small synthetic dataset in the real IDX format, served over
HTTP on 127.0.0.1, and a git copy of this repository to run DVC in.

Nothing here stands in for DVC, MLflow or Keras: the end-to-end tests run the
real tools on a dataset small enough to train in seconds.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import yaml

REPOSITORY = Path(__file__).resolve().parents[1]
# The virtual environment's bin folder, so that `python` and `dvc` in stage
# commands are the ones running the tests.
BIN_DIRECTORY = Path(sys.executable).parent

TINY_DATASET = "tiny_digits"
TINY_CIFAR = "tiny_cifar"
TINY_TRAIN_SIZE = 400
TINY_TEST_SIZE = 100


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the IDX format (magic 0x0000080N, big-endian dimensions, data)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(size.to_bytes(4, "big") for size in array.shape)
    return header + array.astype(np.uint8).tobytes()


def synthetic_digits(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """28x28 images whose class is a bright horizontal band's position: learnable in one epoch."""
    generator = np.random.default_rng(seed)
    labels = np.arange(count) % 10
    generator.shuffle(labels)
    images = generator.integers(0, 60, size=(count, 28, 28), dtype=np.uint8)
    for image, label in zip(images, labels, strict=True):
        image[2 + 2 * label : 4 + 2 * label, 4:24] = 250
    return images, labels.astype(np.uint8)


def write_tiny_dataset(folder: Path) -> dict[str, dict]:
    """Write the four gzipped IDX files into `folder`; return their file specs for the dataset config."""
    folder.mkdir(parents=True, exist_ok=True)
    train_images, train_labels = synthetic_digits(TINY_TRAIN_SIZE, seed=1)
    test_images, test_labels = synthetic_digits(TINY_TEST_SIZE, seed=2)
    arrays = {
        "train_images": ("train-images-idx3-ubyte.gz", train_images),
        "train_labels": ("train-labels-idx1-ubyte.gz", train_labels),
        "test_images": ("t10k-images-idx3-ubyte.gz", test_images),
        "test_labels": ("t10k-labels-idx1-ubyte.gz", test_labels),
    }
    specs = {}
    for role, (name, array) in arrays.items():
        # mtime=0: the same bytes, hence the same sha256, on every run.
        data = gzip.compress(idx_bytes(array), mtime=0)
        (folder / name).write_bytes(data)
        specs[role] = {"name": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    return specs


def write_tiny_cifar(folder: Path, per_batch: int = 20) -> dict[str, dict]:
    """A CIFAR-10 "python version" archive in the real layout (pickled dict batches), tiny; its file spec."""
    import io
    import pickle
    import tarfile

    folder.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(3)
    buffer = io.BytesIO()
    # mtime fixed: the same archive bytes, hence the same md5, on every run.
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.USTAR_FORMAT) as archive:
        for name in [f"data_batch_{number}" for number in range(1, 6)] + ["test_batch"]:
            labels = [int(label) for label in generator.integers(0, 10, size=per_batch)]
            images = generator.integers(0, 40, size=(per_batch, 3, 32, 32), dtype=np.uint8)
            for image, label in zip(images, labels, strict=True):
                image[label % 3, 3 * label : 3 * label + 3, :] = 250  # a learnable band per class
            batch = {b"batch_label": name.encode(), b"labels": labels, b"data": images.reshape(per_batch, -1)}
            data = pickle.dumps(batch, protocol=2)
            member = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            member.size, member.mtime = len(data), 0
            archive.addfile(member, io.BytesIO(data))
    data = buffer.getvalue()
    (folder / "cifar-10-python.tar.gz").write_bytes(data)
    return {"archive": {"name": "cifar-10-python.tar.gz", "md5": hashlib.md5(data).hexdigest(), "size": len(data)}}


class ServedDataset(NamedTuple):
    base_url: str  # http://127.0.0.1:<port>/<dataset name>/
    specs: dict[str, dict]  # role -> {name, sha256, size}
    root: Path  # the served folder, holding <dataset name>/<file name>
    cifar_specs: dict[str, dict]  # the tiny CIFAR archive's, served beside it


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


@pytest.fixture(scope="session")
def tiny_dataset_server(tmp_path_factory):
    """An HTTP server on 127.0.0.1 serving the tiny dataset."""
    root = tmp_path_factory.mktemp("served")
    specs = write_tiny_dataset(root / TINY_DATASET)
    cifar_specs = write_tiny_cifar(root / TINY_CIFAR)
    handler = lambda *args, **kwargs: QuietHandler(*args, directory=str(root), **kwargs)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield ServedDataset(f"http://127.0.0.1:{server.server_port}/{TINY_DATASET}/", specs, root, cifar_specs)
    server.shutdown()
    server.server_close()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a server a test starts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run(
    command: list[str], cwd: Path, check: bool = True, log: Path | None = None, **environment: str
) -> subprocess.CompletedProcess:
    """Run a command as a user would in a shell, with this test run's virtual environment first on PATH.
    `log`: a file for its output instead of pipes, for a command that leaves processes behind (`dvc queue
    start`): they inherit the output, and a pipe one of them holds would keep this call waiting."""
    env = {**os.environ, "PATH": f"{BIN_DIRECTORY}{os.pathsep}{os.environ.get('PATH', '')}", **environment}
    for variable in ("MLFLOW_TRACKING_URI", "MLP_DATA_MIRROR", "DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        if variable not in environment:
            env.pop(variable, None)
    if log is None:
        result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    else:
        with log.open("w") as output:
            result = subprocess.run(command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT, text=True)
        result.stdout, result.stderr = log.read_text(), ""
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} exited {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
        )
    return result


def start_queue_and_wait(path: Path, *options: str, timeout: float = 1800, **environment: str) -> tuple[str, str]:
    """`dvc queue start`, wait until nothing is queued or running, then `dvc queue stop`: (the last `dvc queue
    status`, what `dvc queue start` printed). A worker can miss the empty queue and stay (seen after a
    JSONDecodeError in its log): it is stopped, and its inherited output is a file, not a pipe to wait on."""
    log = path.with_name(f"{path.name}-queue.log")
    started = run(["dvc", "queue", "start", *options], cwd=path, log=log, **environment)
    deadline = time.monotonic() + timeout
    while (status := run(["dvc", "queue", "status"], cwd=path).stdout) and any(
        word in status for word in ("Queued", "Running")
    ):
        assert time.monotonic() < deadline, f"queue still busy after {timeout} s:\n{status}"
        time.sleep(5)
    run(["dvc", "queue", "stop"], cwd=path)
    return status, started.stdout


def copy_repository(destination: Path) -> Path:
    """The files git tracks (plus uncommitted edits to them), as a fresh git repository with one commit."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    for name in listed:
        source = REPOSITORY / name
        if source.is_file() and not name.startswith(("reports/", "dvc.lock")):
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def add_dataset(project: Path, template: str, name: str, base_url: str, files: dict[str, dict]) -> None:
    """Add a dataset the way the README tells a user to: one YAML file in conf/dataset/, nothing else."""
    dataset = yaml.safe_load((project / f"conf/dataset/{template}.yaml").read_text())
    dataset.update(name=name, urls=[base_url], files=files, validation_fraction=0.25)
    (project / f"conf/dataset/{name}.yaml").write_text(yaml.safe_dump(dataset, sort_keys=False))


def make_tiny_project(destination: Path, served: ServedDataset, *overrides: str) -> Path:
    """A copy of the repository with the tiny datasets added, whose params.yaml trains on tiny_digits
    for one epoch, committed."""
    copy_repository(destination)
    add_dataset(destination, "mnist", TINY_DATASET, served.base_url, served.specs)
    cifar_url = served.base_url.replace(TINY_DATASET, TINY_CIFAR)
    add_dataset(destination, "cifar10", TINY_CIFAR, cifar_url, served.cifar_specs)
    run(
        ["mlp", "params", f"dataset={TINY_DATASET}", "train.epochs=1", *overrides],
        cwd=destination,
    )
    git = ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com"]
    run(["git", "init", "-q"], cwd=destination)
    run(["git", "add", "-A"], cwd=destination)
    run([*git, "commit", "-qm", "tiny project"], cwd=destination)
    return destination
