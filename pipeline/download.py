"""Stage `download`: fetch the dataset's raw files into data/raw/<dataset>/, each verified by size and checksum.

A verified file already present is kept offline. URLs are tried in order, each a few times with backoff, and a
broken transfer resumes with an HTTP Range request; bytes are renamed into place only once verified.
"""

from __future__ import annotations

import filecmp
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import unquote, urlparse

import requests
from requests.utils import urldefragauth
from tqdm import tqdm

from pipeline.config import FileSpec, load_params
from pipeline.errors import ConfigError, DownloadError
from pipeline.files import read_json_object, write_json
from pipeline.paths import data_sources_file, raw_directory
from pipeline.stage import run_stage

logger = logging.getLogger(__name__)

# Replaces the public URLs, and wins over params.yaml's `mirror`.
MIRROR_ENVIRONMENT_VARIABLE = "MLP_DATA_MIRROR"

# Small: a broken connection loses only the chunk being read; the rest is kept for the resumed request.
CHUNK_SIZE = 64 << 10
# (connect, read) seconds: a stalled server fails over to the next URL instead of hanging the pipeline.
TIMEOUT = (10, 60)
ATTEMPTS = 3  # per URL, each resuming where the last one stopped
BACKOFF_SECONDS = 1.0  # doubled after each failed attempt


def download(
    files: list[FileSpec],
    destination: Path,
    *,
    urls: list[str],
    dataset_name: str,
    mirror: str | None,
    timeout: tuple[float, float] = TIMEOUT,
    attempts: int = ATTEMPTS,
    backoff_seconds: float = BACKOFF_SECONDS,
) -> list[Path]:
    """Make every file present and verified under `destination`, recording where each came from beside it
    (data_sources_file); return their paths. `urls` are base URLs tried in order; a `mirror` (a folder, file://
    or http(s):// base holding <dataset_name>/<file name>) replaces them."""
    destination.mkdir(parents=True, exist_ok=True)
    record = data_sources_file(destination)
    served = read_json_object(record)
    if mirror and "://" not in mirror:
        mirror = Path(mirror).expanduser().resolve().as_uri()
    with requests.Session() as session:
        for spec in files:
            path = destination / spec.name
            local_problem = spec.mismatch(path) if path.exists() else "missing"
            if local_problem is None:
                logger.info("%s already present and verified", path)
                continue
            if local_problem != "missing":
                logger.warning("%s does not verify (%s): fetching it again", path, local_problem)
            if mirror:
                sources = [f"{mirror.rstrip('/')}/{dataset_name}/{spec.name}"]
            else:
                sources = [base + (spec.remote_name or spec.name) for base in urls]
            try:
                served[spec.name] = _fetch(session, spec, sources, path, timeout, attempts, backoff_seconds)
            except DownloadError as error:
                if local_problem == "missing":
                    raise
                raise DownloadError(
                    f"{path} is corrupt ({local_problem}) and no source served a verified copy: "
                    f"replace it with a verified copy (or set {MIRROR_ENVIRONMENT_VARIABLE} to a folder "
                    f"holding <dataset>/<file>) and run `dvc repro download`\n{error}"
                ) from None
    write_json(record, {spec.name: served.get(spec.name, "unknown") for spec in files})
    return [destination / spec.name for spec in files]


def _fetch(session, spec: FileSpec, sources: list[str], path: Path, timeout, attempts, backoff_seconds) -> str:
    """Fetch the first of `sources` that verifies into `path`; return its URL without credentials."""
    # A fixed name beside the dataset's folder (data/raw/.<dataset>.<file>.part), not in it: DVC empties
    # the folder, the stage's output, before the stage runs, and the next run resumes an interrupted
    # download. The rename is atomic (same file system).
    partial = path.parent.with_name(f".{path.parent.name}.{spec.name}.part")
    failures = []
    for url in sources:
        try:
            if url.startswith("file://"):
                with open(unquote(urlparse(url).path), "rb") as source:
                    _write(partial, spec, iter(lambda: source.read(CHUNK_SIZE), b""), have=0)
            else:
                _download_http(session, url, partial, spec, timeout, attempts, backoff_seconds)
            problem = wrong_bytes = spec.mismatch(partial)
        except (OSError, requests.RequestException) as error:
            problem, wrong_bytes = _reason(error), None  # what arrived is kept for the next source to resume
        else:
            if problem is None:
                os.replace(partial, path)
                logger.info("%s downloaded from %s and verified", path, url)
                return urldefragauth(url)  # a user name or password must never reach a file or a run
        if path.exists() and partial.exists() and filecmp.cmp(partial, path, shallow=False):
            # Two copies failing alike (a size pin too large ends the body early): the pin is the likely fault.
            partial.unlink()
            local_problem = spec.mismatch(path)
            raise ConfigError(
                f"{path} and {urldefragauth(url)} agree ({local_problem}): the file is likely good; "
                f"check its {local_problem.split()[0]} pin in conf/dataset/"
            )
        if wrong_bytes:
            partial.unlink()  # wrong bytes: nothing in it is worth resuming
        failures.append(f"{url}: {problem}")
        logger.warning("%s", failures[-1])
    partial.unlink(missing_ok=True)
    tried = "\n".join(f"  {failure}" for failure in failures)
    raise DownloadError(f"could not get a verified {spec.name} from any URL:\n{tried}")


def _download_http(session, url: str, partial: Path, spec: FileSpec, timeout, attempts, backoff_seconds) -> None:
    for attempt in range(1, attempts + 1):
        have = partial.stat().st_size if partial.exists() else 0
        if have > spec.size:  # too long, left by an earlier run: start again
            partial.unlink()
            have = 0
        if have == spec.size:
            return
        try:
            headers = {"Range": f"bytes={have}-"} if have else {}
            with session.get(url, stream=True, timeout=timeout, headers=headers) as response:
                response.raise_for_status()
                # 200 rather than 206: the server ignored the Range and sends the file from its first byte.
                _write(partial, spec, response.iter_content(CHUNK_SIZE), have if response.status_code == 206 else 0)
            if (received := partial.stat().st_size) < spec.size:
                raise requests.ConnectionError(f"the body ended after {received:,} bytes")
            return
        except requests.RequestException as error:
            status = error.response.status_code if error.response is not None else 0
            if attempt == attempts or 400 <= status < 500:
                raise  # a 4xx will not change on a retry
            delay = backoff_seconds * 2 ** (attempt - 1)
            logger.warning(
                "%s: %s; retrying in %.1f s (attempt %d of %d)", url, _reason(error), delay, attempt + 1, attempts
            )
            time.sleep(delay)


def _write(partial: Path, spec: FileSpec, chunks: Iterable[bytes], have: int) -> None:
    """Append `chunks` to the first `have` bytes of `partial` (replace it when 0), showing progress; fsync."""
    with (
        partial.open("ab" if have else "wb") as output,
        tqdm(total=spec.size, initial=have, unit="B", unit_scale=True, desc=spec.name, mininterval=1.0) as progress,
    ):
        for chunk in chunks:
            output.write(chunk)
            progress.update(len(chunk))
            if output.tell() > spec.size:
                break  # more than the pinned size: verification will refuse it
        output.flush()
        os.fsync(output.fileno())


def _reason(error: Exception) -> str:
    if isinstance(error, requests.HTTPError) and error.response is not None:
        return f"HTTP {error.response.status_code} {error.response.reason}"
    if isinstance(error, requests.Timeout) or "timed out" in str(error).lower():
        return "timed out"
    if isinstance(error, requests.ConnectionError):
        return "connection failed"
    if isinstance(error, FileNotFoundError):
        return "no such file"
    return f"{type(error).__name__}: {error}"


def main() -> None:
    params = load_params()
    dataset = params.dataset
    mirror = os.environ.get(MIRROR_ENVIRONMENT_VARIABLE) or params.mirror
    if mirror:
        logger.info("downloading from mirror %s instead of the public URLs", mirror)
    download(
        list(dataset.files.values()),
        raw_directory(dataset.name),
        urls=dataset.urls,
        dataset_name=dataset.name,
        mirror=mirror,
    )


if __name__ == "__main__":
    run_stage(main)
