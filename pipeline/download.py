"""Stage `download`: fetch the dataset's raw files, each verified by size and sha256.

Reads params `dataset.urls`, `dataset.files` (and the mirror setting); writes
data/raw/<file name>. A file already present and verified is kept without any
network access. Each download goes to a temporary file in the same folder and is
renamed to its final name only once verified, so a file under its final name is
always a verified one, whatever was interrupted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

import requests
from tqdm import tqdm

from pipeline.config import FileSpec, load_params, mirror_location
from pipeline.datasets import RAW_DIRECTORY
from pipeline.errors import DownloadError, run_stage

logger = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20  # bytes
# (connect, read) seconds: a stalled server fails over to the next mirror
# instead of hanging the pipeline.
TIMEOUT = (10, 60)


def download(
    files: list[FileSpec],
    urls: list[str],
    destination: Path,
    dataset_name: str,
    mirror: str | None = None,
) -> list[Path]:
    """Make every file present and verified under `destination`; return their paths.

    `urls` are base URLs tried in order. A `mirror` (a local folder, file:// or
    http(s):// base holding <dataset_name>/<file name>) replaces them.
    """
    destination.mkdir(parents=True, exist_ok=True)
    bases = [_mirror_base(mirror, dataset_name)] if mirror else list(urls)
    paths = []
    for spec in files:
        path = destination / spec.name
        if path.exists() and _problem(path, spec) is None:
            logger.info("%s already present and verified", path)
        else:
            _fetch(spec, bases, path)
        paths.append(path)
    return paths


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def _mirror_base(mirror: str, dataset_name: str) -> str:
    if "://" not in mirror:
        mirror = Path(mirror).expanduser().resolve().as_uri()
    return f"{mirror.rstrip('/')}/{dataset_name}/"


def _problem(path: Path, spec: FileSpec) -> str | None:
    """Why `path` is not the file `spec` describes, or None if it is."""
    size = path.stat().st_size
    if size != spec.size:
        return f"size {size:,} bytes, expected {spec.size:,}"
    actual = sha256_of(path)
    if actual != spec.sha256:
        return f"sha256 {actual}, expected {spec.sha256}"
    return None


def _fetch(spec: FileSpec, bases: list[str], path: Path) -> None:
    failures = []
    for base in bases:
        url = base + spec.name
        # Same folder as the final file, so the rename below is atomic.
        handle, temporary_name = tempfile.mkstemp(prefix=f".{spec.name}.", suffix=".part", dir=path.parent)
        temporary = Path(temporary_name)
        try:
            with os.fdopen(handle, "wb") as output:
                _copy(url, output, spec)
                output.flush()
                os.fsync(output.fileno())
            problem = _problem(temporary, spec)
            if problem is None:
                os.replace(temporary, path)
                logger.info("%s downloaded from %s and verified", path, url)
                return
            failures.append(f"{url}: {problem}")
        except (OSError, requests.RequestException) as error:
            failures.append(f"{url}: {_reason(error)}")
        finally:
            temporary.unlink(missing_ok=True)
        logger.warning("%s", failures[-1])
    tried = "\n".join(f"  {failure}" for failure in failures)
    raise DownloadError(f"could not get a verified {spec.name} from any URL:\n{tried}")


def _copy(url: str, output, spec: FileSpec) -> None:
    with tqdm(total=spec.size, unit="B", unit_scale=True, desc=spec.name, mininterval=1.0) as progress:
        if url.startswith("file://"):
            with open(unquote(urlparse(url).path), "rb") as source:
                while chunk := source.read(CHUNK_SIZE):
                    output.write(chunk)
                    progress.update(len(chunk))
            return
        with requests.get(url, stream=True, timeout=TIMEOUT) as response:
            response.raise_for_status()
            for chunk in response.iter_content(CHUNK_SIZE):
                output.write(chunk)
                progress.update(len(chunk))
                # A server sending more than the pinned size is wrong: stop early.
                if output.tell() > spec.size:
                    return


def _reason(error: Exception) -> str:
    if isinstance(error, requests.HTTPError) and error.response is not None:
        return f"HTTP {error.response.status_code} {error.response.reason}"
    if isinstance(error, requests.Timeout):
        return "timed out"
    if isinstance(error, requests.ConnectionError):
        return "connection failed"
    if isinstance(error, FileNotFoundError):
        return "no such file"
    return f"{type(error).__name__}: {error}"


def main() -> None:
    params = load_params()
    dataset = params.dataset
    files = [
        dataset.files.train_images,
        dataset.files.train_labels,
        dataset.files.test_images,
        dataset.files.test_labels,
    ]
    mirror = mirror_location(params)
    if mirror:
        logger.info("downloading from mirror %s instead of the public URLs", mirror)
    download(files, dataset.urls, RAW_DIRECTORY, dataset.name, mirror)


if __name__ == "__main__":
    run_stage(main)
