"""Stage `download`: fetch the dataset's raw files, each verified by size and sha256.

Reads params `dataset.name`, `dataset.urls`, `dataset.files` (and the mirror
setting); writes data/raw/<file name>. A file already present and verified is
kept without any network access. URLs are tried in order; each gets a timeout
on every request and a few attempts with backoff, and a broken transfer is
resumed with an HTTP Range request where the server supports it. Bytes go to
.<file name>.part in the same folder, flushed and fsynced, and the file is
renamed to its final name only once its size and checksum verified: a file
under its final name is always a verified one, whatever was interrupted.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from urllib.parse import unquote, urlparse, urlsplit, urlunsplit

import requests
from tqdm import tqdm

from pipeline.checksums import checksum_problem
from pipeline.config import MIRROR_ENVIRONMENT_VARIABLE, load_params, mirror_location
from pipeline.dataset_config import FileSpec
from pipeline.errors import DownloadError
from pipeline.files import read_json_object, write_json
from pipeline.paths import DATA_SOURCES_FILE, RAW_DIRECTORY
from pipeline.stage import run_stage

logger = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20  # bytes
# Smaller for the network: a broken connection loses the chunk being read, and
# everything before it is kept for the resumed request.
NETWORK_CHUNK_SIZE = 64 << 10
# (connect, read) seconds: a stalled server fails over to the next mirror
# instead of hanging the pipeline.
TIMEOUT = (10, 60)
ATTEMPTS = 3  # per URL, resuming where the last attempt stopped
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
    """Make every file present and verified under `destination`; return their paths.

    `urls` are base URLs tried in order. A `mirror` (a local folder, file:// or
    http(s):// base holding <dataset_name>/<file name>) replaces them.
    """
    destination.mkdir(parents=True, exist_ok=True)
    paths = []
    record = destination.with_name(DATA_SOURCES_FILE.name)  # data/raw -> data/sources.json
    sources_served = read_json_object(record)
    with requests.Session() as session:
        for spec in files:
            path = destination / spec.name
            local_problem = checksum_problem(path, spec) if path.exists() else "missing"
            if local_problem is None:
                logger.info("%s already present and verified", path)
            else:
                if local_problem != "missing":
                    logger.warning("%s does not verify (%s): fetching it again", path, local_problem)
                if mirror:
                    sources = [_mirror_base(mirror, dataset_name) + spec.name]
                else:
                    sources = [base + (spec.remote_name or spec.name) for base in urls]
                try:
                    sources_served[spec.name] = _fetch(session, spec, sources, path, timeout, attempts, backoff_seconds)
                except DownloadError as error:
                    if local_problem == "missing":
                        raise
                    raise DownloadError(
                        f"{path} is corrupt ({local_problem}) and no source served a verified copy: "
                        f"replace it with a verified copy (or set {MIRROR_ENVIRONMENT_VARIABLE} to a folder "
                        f"holding <dataset>/<file>) and run `dvc repro download`\n{error}"
                    ) from None
            paths.append(path)
    write_json(record, {spec.name: sources_served.get(spec.name, "unknown") for spec in files})
    return paths


def _mirror_base(mirror: str, dataset_name: str) -> str:
    if "://" not in mirror:
        mirror = Path(mirror).expanduser().resolve().as_uri()
    return f"{mirror.rstrip('/')}/{dataset_name}/"


def _fetch(
    session: requests.Session,
    spec: FileSpec,
    sources: list[str],
    path: Path,
    timeout,
    attempts: int,
    backoff_seconds: float,
) -> str:
    """Fetch the first of `sources` that verifies into `path`; return its URL without credentials."""
    # A fixed name beside the final file: an interrupted download is resumed by
    # the next run, and the rename below is atomic (same folder).
    partial = path.with_name(f".{spec.name}.part")
    failures = []
    for url in sources:
        try:
            if url.startswith("file://"):
                _copy_local(url, partial, spec)
            else:
                _download_http(session, url, partial, spec, timeout, attempts, backoff_seconds)
            problem = checksum_problem(partial, spec)
        except (OSError, requests.RequestException) as error:
            failures.append(f"{url}: {_reason(error)}")
            logger.warning("%s", failures[-1])
            continue
        if problem is None:
            os.replace(partial, path)
            logger.info("%s downloaded from %s and verified", path, url)
            return without_credentials(url)
        partial.unlink()  # wrong bytes: nothing in it is worth resuming
        failures.append(f"{url}: {problem}")
        logger.warning("%s", failures[-1])
    partial.unlink(missing_ok=True)
    tried = "\n".join(f"  {failure}" for failure in failures)
    raise DownloadError(f"could not get a verified {spec.name} from any URL:\n{tried}")


def without_credentials(url: str) -> str:
    """`url` without a user name or password, which must never reach a file or a run."""
    parts = urlsplit(url)
    host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=host))


def _copy_local(url: str, partial: Path, spec: FileSpec) -> None:
    with open(unquote(urlparse(url).path), "rb") as source, partial.open("wb") as output, _progress(spec, 0) as bar:
        while chunk := source.read(CHUNK_SIZE):
            output.write(chunk)
            bar.update(len(chunk))
        output.flush()
        os.fsync(output.fileno())


def _download_http(
    session: requests.Session,
    url: str,
    partial: Path,
    spec: FileSpec,
    timeout,
    attempts: int,
    backoff_seconds: float,
) -> None:
    """Fill `partial` from `url`, resuming with a Range request after a broken connection."""
    for attempt in range(1, attempts + 1):
        have = partial.stat().st_size if partial.exists() else 0
        if have >= spec.size:
            if have > spec.size:
                partial.unlink()
                continue
            return
        try:
            headers = {"Range": f"bytes={have}-"} if have else {}
            with session.get(url, stream=True, timeout=timeout, headers=headers) as response:
                response.raise_for_status()
                if have and response.status_code != 206:
                    have = 0  # the server ignored the Range: start again from the first byte
                with partial.open("ab" if have else "wb") as output, _progress(spec, have) as bar:
                    for chunk in response.iter_content(NETWORK_CHUNK_SIZE):
                        output.write(chunk)
                        bar.update(len(chunk))
                        if output.tell() > spec.size:
                            break  # more than the pinned size: verification will refuse it
                    output.flush()
                    os.fsync(output.fileno())
            if partial.stat().st_size >= spec.size:
                return
            error: Exception = requests.ConnectionError(f"the body ended after {partial.stat().st_size:,} bytes")
        except requests.HTTPError as http_error:
            status = http_error.response.status_code if http_error.response is not None else 0
            if status < 500 or attempt == attempts:
                raise  # 4xx will not change on a retry
            error = http_error
        except requests.RequestException as request_error:
            if attempt == attempts:
                raise
            error = request_error
        if attempt == attempts:
            raise error
        delay = backoff_seconds * 2 ** (attempt - 1)
        logger.warning(
            "%s: %s; retrying in %.1f s (attempt %d of %d)", url, _reason(error), delay, attempt + 1, attempts
        )
        time.sleep(delay)


def _progress(spec: FileSpec, initial: int) -> tqdm:
    return tqdm(total=spec.size, initial=initial, unit="B", unit_scale=True, desc=spec.name, mininterval=1.0)


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
    files = list(dataset.files.values())
    mirror = mirror_location(params.mirror)
    if mirror:
        logger.info("downloading from mirror %s instead of the public URLs", mirror)
    download(files, RAW_DIRECTORY, urls=dataset.urls, dataset_name=dataset.name, mirror=mirror)


if __name__ == "__main__":
    run_stage(main)
