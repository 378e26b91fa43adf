"""Downloads: from a local folder or file:// mirror and from an HTTP server on
127.0.0.1; failing URLs fall through to the next; nothing unverified is left
under a final name."""

from __future__ import annotations

import hashlib
import json

import pytest
from conftest import TINY_DATASET

from pipeline.config import FileSpec
from pipeline.download import download
from pipeline.errors import ConfigError, DownloadError

CLOSED_PORT_URL = "http://127.0.0.1:9/"  # the discard port: nothing listens there


def specs_of(specs: dict[str, dict]) -> list[FileSpec]:
    return [FileSpec(**spec) for spec in specs.values()]


@pytest.fixture
def raw(tmp_path):
    """The dataset's folder, as data/raw/<dataset>/: partial downloads and the sources record go beside it."""
    folder = tmp_path / TINY_DATASET
    folder.mkdir()
    return folder


def verified(path, spec: FileSpec) -> bool:
    return hashlib.sha256(path.read_bytes()).hexdigest() == spec.sha256


def test_http_download_verifies_every_file(raw, tiny_dataset_server):
    base_url, specs, served_root, _ = tiny_dataset_server
    paths = download(specs_of(specs), raw, urls=[base_url], dataset_name=TINY_DATASET, mirror=None)
    assert all(verified(path, spec) for path, spec in zip(paths, specs_of(specs), strict=True))
    assert sorted(path.name for path in raw.iterdir()) == sorted(spec["name"] for spec in specs.values())


def test_unreachable_and_missing_urls_fall_through_to_the_next(raw, tiny_dataset_server):
    base_url, specs, served_root, _ = tiny_dataset_server
    missing = base_url.replace(TINY_DATASET, "nowhere")
    paths = download(
        specs_of(specs), raw, urls=[CLOSED_PORT_URL, missing, base_url], dataset_name=TINY_DATASET, mirror=None
    )
    assert all(path.exists() for path in paths)


@pytest.mark.parametrize("form", ["folder", "file_uri", "http"])
def test_mirror_replaces_the_public_urls(raw, tiny_dataset_server, form):
    base_url, specs, served_root, _ = tiny_dataset_server
    mirror = {
        "folder": str(served_root),
        "file_uri": served_root.as_uri(),
        "http": base_url.removesuffix(f"{TINY_DATASET}/"),
    }[form]
    paths = download(specs_of(specs), raw, urls=[CLOSED_PORT_URL], dataset_name=TINY_DATASET, mirror=mirror)
    assert all(path.exists() for path in paths)


def test_present_and_verified_files_need_no_network(raw, tiny_dataset_server):
    base_url, specs, served_root, _ = tiny_dataset_server
    download(specs_of(specs), raw, urls=[base_url], dataset_name=TINY_DATASET, mirror=None)
    # Only a closed port left: any network access would fail.
    download(specs_of(specs), raw, urls=[CLOSED_PORT_URL], dataset_name=TINY_DATASET, mirror=None)


def test_checksum_mismatch_everywhere_fails_listing_each_url(tmp_path, raw, tiny_dataset_server):
    base_url, specs, served_root, _ = tiny_dataset_server
    wrong = FileSpec(**{**specs["train_labels"], "sha256": "0" * 64})
    with pytest.raises(DownloadError) as error:
        download([wrong], raw, urls=[CLOSED_PORT_URL, base_url], dataset_name=TINY_DATASET, mirror=None)
    message = str(error.value)
    assert f"{CLOSED_PORT_URL}{wrong.name}: connection failed" in message
    assert f"{base_url}{wrong.name}: sha256 " in message
    assert f"expected {'0' * 64}" in message
    assert [path for path in tmp_path.rglob("*") if path.is_file()] == [], "nothing unverified may remain"


def test_http_error_status_is_reported(raw, tiny_dataset_server):
    base_url, specs, served_root, _ = tiny_dataset_server
    missing = FileSpec(name="absent.gz", sha256="0" * 64, size=10)
    with pytest.raises(DownloadError, match="absent.gz: HTTP 404"):
        download([missing], raw, urls=[base_url], dataset_name=TINY_DATASET, mirror=None)


def test_a_corrupted_local_file_is_replaced(raw, tiny_dataset_server):
    base_url, specs, served_root, _ = tiny_dataset_server
    spec = specs_of(specs)[1]
    (raw / spec.name).write_bytes(b"corrupted")
    download([spec], raw, urls=[base_url], dataset_name=TINY_DATASET, mirror=None)
    assert verified(raw / spec.name, spec)


def test_the_source_of_each_file_is_recorded_without_credentials(tmp_path, raw, tiny_dataset_server):
    """data/raw/<dataset>.sources.json, beside the folder, says where each file came from: the mirror or the URL."""
    base_url, specs, served_root, _ = tiny_dataset_server
    download(specs_of(specs), raw, urls=[CLOSED_PORT_URL], dataset_name=TINY_DATASET, mirror=str(served_root))
    record = json.loads((tmp_path / f"{TINY_DATASET}.sources.json").read_text())
    assert record == {spec.name: f"{served_root.as_uri()}/{TINY_DATASET}/{spec.name}" for spec in specs_of(specs)}
    (raw / specs_of(specs)[0].name).unlink()
    with_login = base_url.replace("http://", "http://someone:secret@")
    download(specs_of(specs), raw, urls=[with_login], dataset_name=TINY_DATASET, mirror=None)
    record = json.loads((tmp_path / f"{TINY_DATASET}.sources.json").read_text())
    first, *others = specs_of(specs)
    assert record[first.name] == base_url + first.name  # fetched again, from the URL, without the login
    assert all(record[spec.name].startswith(served_root.as_uri()) for spec in others)  # kept: not fetched again
    assert "secret" not in (tmp_path / f"{TINY_DATASET}.sources.json").read_text()


@pytest.mark.parametrize("pin", ["sha256", "size"])
def test_a_wrong_pin_is_named_when_the_local_file_and_the_source_agree(raw, tiny_dataset_server, pin):
    base_url, specs, served_root, _ = tiny_dataset_server
    good = specs_of(specs)[1]
    (raw / good.name).write_bytes((served_root / TINY_DATASET / good.name).read_bytes())
    wrong = good.model_copy(update={"sha256": "0" * 64} if pin == "sha256" else {"size": good.size + 1})
    with pytest.raises(ConfigError) as raised:
        download([wrong], raw, urls=[base_url], dataset_name=TINY_DATASET, mirror=None)
    message = str(raised.value)
    assert f"{good.name} and {base_url}{good.name} agree" in message and f"check its {pin} pin in conf/" in message
    assert "corrupt" not in message
