"""Datasets side by side: a dataset added from local files only (`mlp dataset add` without --url) trains
through `dvc exp run`, and switching back and forth between it and a dataset whose files have the same
names works offline, each time with the weights it had before.

Each dataset keeps its files in data/raw/<dataset>/ and data/processed/<dataset>/: the files of one never
replace the other's. On a switch back DVC's run cache restores the raw files (the download stage is
not run); the later stages run again (their reports are outputs kept out of DVC's cache, which keeps
them out of its run cache too) and, training being bitwise repeatable on one machine, give the same
weights.
"""

from __future__ import annotations

import gzip
import http.server
import json
import threading
from pathlib import Path

import pytest
from conftest import (
    TINY_DATASET,
    TINY_TEST_SIZE,
    TINY_TRAIN_SIZE,
    QuietHandler,
    ServedDataset,
    idx_bytes,
    make_tiny_project,
    run,
    synthetic_digits,
    write_tiny_cifar,
    write_tiny_dataset,
)

LOCAL_DATASET = "local_digits"


def write_other_digits(folder: Path) -> dict[str, Path]:
    """MNIST's four file names, as the tiny dataset's, holding other images: role -> path."""
    folder.mkdir(parents=True)
    splits = {"train": synthetic_digits(TINY_TRAIN_SIZE, seed=11), "test": synthetic_digits(TINY_TEST_SIZE, seed=12)}
    names = {"train": "train", "test": "t10k"}
    paths = {}
    for split, (images, labels) in splits.items():
        for kind, array, dimensions in (("images", images, 3), ("labels", labels, 1)):
            path = folder / f"{names[split]}-{kind}-idx{dimensions}-ubyte.gz"
            path.write_bytes(gzip.compress(idx_bytes(array), mtime=0))
            paths[f"{split}_{kind}"] = path
    return paths


def weights_after(project: Path, dataset: str) -> tuple[str, str]:
    """`dvc exp run` on `dataset` for one epoch: the weights' sha256 and DVC's output."""
    result = run(["dvc", "exp", "run", "-S", f"dataset={dataset}", "-S", "train.epochs=1"], cwd=project)
    metrics = json.loads((project / "reports/metrics.json").read_text())
    return metrics["weights_sha256"], result.stdout


@pytest.mark.slow
def test_switching_datasets_back_and_forth_offline_gives_the_same_weights(tmp_path):
    # A server of this test's own, for the first dataset's first download only.
    served = tmp_path / "served"
    specs = write_tiny_dataset(served / TINY_DATASET)
    cifar_specs = write_tiny_cifar(served / "tiny_cifar")
    handler = lambda *args, **kwargs: QuietHandler(*args, directory=str(served), **kwargs)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base_url = f"http://127.0.0.1:{server.server_port}/{TINY_DATASET}/"
        project = make_tiny_project(tmp_path / "project", ServedDataset(base_url, specs, served, cifar_specs))
        first_weights, _ = weights_after(project, TINY_DATASET)
    finally:
        server.shutdown()
        server.server_close()
    first_files = {path.name: path.read_bytes() for path in (project / "data/raw" / TINY_DATASET).iterdir()}

    # From local files only: plain paths and file:// URLs, no --url, no mirror, no server.
    local = write_other_digits(tmp_path / "downloads")
    files = [f"--file={role}={path if 'images' in role else path.as_uri()}" for role, path in local.items()]
    added = run(["mlp", "dataset", "add", LOCAL_DATASET, "--format", "idx", *files], cwd=project)
    assert f"no --url: its files are read from {(tmp_path / 'downloads').as_uri()}/" in added.stdout
    run(["git", "add", f"conf/dataset/{LOCAL_DATASET}.yaml"], cwd=project)
    second_weights, _ = weights_after(project, LOCAL_DATASET)
    assert second_weights != first_weights

    for path in local.values():
        assert (project / "data/raw" / LOCAL_DATASET / path.name).read_bytes() == path.read_bytes()
    sources = json.loads((project / f"data/raw/{LOCAL_DATASET}.sources.json").read_text())
    assert sources == {path.name: path.as_uri() for path in local.values()}

    # Back and forth, offline: the raw files from DVC's cache, the same weights each time.
    for dataset, weights in ((TINY_DATASET, first_weights), (LOCAL_DATASET, second_weights)):
        again, output = weights_after(project, dataset)
        assert "Stage 'download' is cached - skipping run" in output, output
        assert again == weights, f"switching back to {dataset} gave other weights"
        for name in ("train", "validation", "test"):
            assert (project / "data/processed" / dataset / f"{name}.npz").is_file()
    # Same file names, apart: the local dataset's files never replaced the first one's.
    run(["dvc", "exp", "run", "-S", f"dataset={TINY_DATASET}", "-S", "train.epochs=1"], cwd=project)
    assert {path.name: path.read_bytes() for path in (project / "data/raw" / TINY_DATASET).iterdir()} == first_files
