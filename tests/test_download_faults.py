"""Downloads against a real HTTP server on 127.0.0.1 that misbehaves on purpose.

The first part of each path picks the fault: /ok/, /404/, /500/, /truncate/
(announces the full length, sends half, closes), /truncate_once/ (that, on the
first request only), /flip/ (one byte changed), /stall/ (headers, then
silence), /reset/ (half the body, then a TCP reset), /reset_once/, and
/norange/ and /reset_once_norange/ (the same, ignoring Range headers).
"""

from __future__ import annotations

import hashlib
import http.server
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from pipeline.config import FileSpec
from pipeline.download import download
from pipeline.errors import DownloadError

PAYLOAD = bytes(range(256)) * 4000  # 1,024,000 bytes: many network chunks
NAME = "payload.bin"
DATASET = "any"  # downloaded into <tmp_path>/any/, as into data/raw/<dataset>/
SPEC = FileSpec(name=NAME, sha256=hashlib.sha256(PAYLOAD).hexdigest(), size=len(PAYLOAD))
FAST = {"timeout": (2, 0.5), "attempts": 3, "backoff_seconds": 0.01}


class FaultyHandler(http.server.BaseHTTPRequestHandler):
    requests: list[tuple[str, str | None]] = []
    seen: set[str] = set()

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass

    def do_GET(self):  # noqa: N802 - the base class's name
        mode = self.path.strip("/").split("/")[0]
        range_header = self.headers.get("Range")
        type(self).requests.append((self.path, range_header))
        first_time = self.path not in type(self).seen
        type(self).seen.add(self.path)
        if mode in ("404", "500"):
            self.send_error(int(mode))
            return
        body = PAYLOAD
        if mode == "flip":
            body = PAYLOAD[:100] + bytes([PAYLOAD[100] ^ 1]) + PAYLOAD[101:]
        start = 0
        if range_header and "norange" not in mode:
            start = int(range_header.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        body = body[start:]
        if mode == "stall":
            time.sleep(3)
            return
        if mode == "truncate" or (mode == "truncate_once" and first_time):
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if mode == "reset" or (mode.startswith("reset_once") and first_time):
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            # SO_LINGER with a zero timeout: close() sends a TCP reset.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            return
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FaultyHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def fresh_log():
    FaultyHandler.requests.clear()
    FaultyHandler.seen.clear()


def final_files(folder):
    """The files under `folder`, partial downloads included, but not the record of their sources."""
    files = [path for path in folder.rglob("*") if path.is_file() and not path.name.endswith(".sources.json")]
    return sorted(path.relative_to(folder).as_posix() for path in files)


def fetch(folder: Path, *urls: str) -> None:
    """Download SPEC into `folder`/DATASET from `urls` in turn, with no mirror and the short test timeouts."""
    download([SPEC], folder / DATASET, urls=list(urls), dataset_name=DATASET, mirror=None, **FAST)


@pytest.mark.parametrize("fault", ["404", "500", "truncate", "flip", "stall", "reset"])
def test_each_fault_moves_on_to_the_next_mirror(tmp_path, server, fault):
    fetch(tmp_path, f"{server}/{fault}/", f"{server}/ok/")
    assert (tmp_path / DATASET / NAME).read_bytes() == PAYLOAD
    assert final_files(tmp_path) == [f"{DATASET}/{NAME}"]  # no partial file left behind


@pytest.mark.parametrize("fault", ["404", "500", "truncate", "flip", "stall", "reset"])
def test_no_unverified_file_under_the_final_name(tmp_path, server, fault):
    with pytest.raises(DownloadError):
        fetch(tmp_path, f"{server}/{fault}/")
    assert not (tmp_path / DATASET / NAME).exists()
    assert final_files(tmp_path) == []


def test_a_broken_transfer_is_resumed_with_a_range_request(tmp_path, server):
    fetch(tmp_path, f"{server}/reset_once/")
    assert (tmp_path / DATASET / NAME).read_bytes() == PAYLOAD
    ranges = [header for _, header in FaultyHandler.requests]
    assert ranges[0] is None
    assert ranges[1] is not None and ranges[1].startswith("bytes=") and ranges[1] != "bytes=0-"


def test_a_truncated_body_is_resumed(tmp_path, server):
    fetch(tmp_path, f"{server}/truncate_once/")
    assert (tmp_path / DATASET / NAME).read_bytes() == PAYLOAD
    # Resumed from what had arrived (whole network chunks of the first half).
    resumed_from = int(FaultyHandler.requests[1][1].removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_from <= len(PAYLOAD) // 2


def test_a_server_ignoring_range_restarts_cleanly(tmp_path, server):
    fetch(tmp_path, f"{server}/reset_once_norange/")
    assert (tmp_path / DATASET / NAME).read_bytes() == PAYLOAD


def test_an_interrupted_run_is_resumed_by_the_next(tmp_path, server):
    # What a killed run leaves: the first half under the partial name.
    (tmp_path / f".{DATASET}.{NAME}.part").write_bytes(PAYLOAD[:400_000])
    fetch(tmp_path, f"{server}/ok/")
    assert (tmp_path / DATASET / NAME).read_bytes() == PAYLOAD
    assert FaultyHandler.requests == [("/ok/payload.bin", "bytes=400000-")]


def test_404_is_not_retried_but_500_is(tmp_path, server):
    with pytest.raises(DownloadError):
        fetch(tmp_path, f"{server}/404/", f"{server}/500/")
    paths = [path for path, _ in FaultyHandler.requests]
    assert paths.count("/404/payload.bin") == 1
    assert paths.count("/500/payload.bin") == FAST["attempts"]


def test_the_error_names_every_url_and_why_it_failed(tmp_path, server):
    urls = [f"{server}/{fault}/" for fault in ("404", "500", "flip", "stall")]
    with pytest.raises(DownloadError) as error:
        fetch(tmp_path, *urls)
    message = str(error.value)
    assert f"could not get a verified {NAME} from any URL" in message
    assert f"{server}/404/{NAME}: HTTP 404" in message
    assert f"{server}/500/{NAME}: HTTP 500" in message
    assert f"{server}/flip/{NAME}: sha256 " in message and f"expected {SPEC.sha256}" in message
    assert f"{server}/stall/{NAME}: timed out" in message
