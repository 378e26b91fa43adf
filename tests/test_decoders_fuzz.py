"""Property-based fuzzing of every decoder: bit flips, truncations, header
mutations, absurd dimensions and random bytes. Whatever the input, a decoder
returns or raises DataError; nothing else escapes, nothing hangs (a deadline per
case) and memory stays bounded (no allocation sized from an unchecked header).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import tarfile
import tracemalloc

import numpy as np
import pytest
from conftest import idx_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.config import CsvLayout, FileSpec
from pipeline.decoders import _cifar_batch, read_cifar_archive, read_csv_table, read_idx
from pipeline.errors import DataError

FUZZ = settings(
    max_examples=1000,
    deadline=2000,  # milliseconds per case: a hang fails the test
    derandomize=True,  # the same cases on every run: CI is repeatable
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
MEMORY_LIMIT = 64 << 20  # bytes: far above what any of these tiny inputs needs


def mutated(base: bytes) -> st.SearchStrategy[bytes]:
    def flip(position: int) -> bytes:
        data = bytearray(base)
        data[position // 8] ^= 1 << (position % 8)
        return bytes(data)

    def overwrite(arguments: tuple[int, bytes]) -> bytes:
        offset, patch = arguments
        return base[:offset] + patch + base[offset + len(patch) :]

    return st.one_of(
        st.integers(0, len(base) * 8 - 1).map(flip),
        st.integers(0, len(base) - 1).map(lambda length: base[:length]),
        st.tuples(st.integers(0, 24), st.binary(min_size=1, max_size=8)).map(overwrite),
        st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=3).map(
            lambda sizes: base[:4] + b"".join(size.to_bytes(4, "big") for size in sizes) + base[4 + 4 * len(sizes) :]
        ),
        st.binary(max_size=300),
        st.just(base),
    )


def decodes_or_refuses(decode) -> None:
    tracemalloc.start()
    try:
        decode()
    except DataError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < MEMORY_LIMIT, f"peak {peak:,} bytes"


IDX_IMAGES = idx_bytes(np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4))
IDX_LABELS = idx_bytes(np.array([3, 7, 1], dtype=np.uint8))


@FUZZ
@given(data=mutated(IDX_IMAGES), compressed=st.booleans())
def test_idx_images(tmp_path, data, compressed):
    path = tmp_path / "images"
    path.write_bytes(gzip.compress(data) if compressed else data)
    decodes_or_refuses(lambda: read_idx(path, dimensions=3, max_bytes=1 << 20))


@FUZZ
@given(data=mutated(IDX_LABELS))
def test_idx_labels(tmp_path, data):
    path = tmp_path / "labels"
    path.write_bytes(data)
    decodes_or_refuses(lambda: read_idx(path, dimensions=1, max_bytes=1 << 20))


@FUZZ
@given(data=mutated(gzip.compress(IDX_IMAGES, mtime=0)))
def test_idx_gzip_stream(tmp_path, data):
    path = tmp_path / "images.gz"
    path.write_bytes(data)
    decodes_or_refuses(lambda: read_idx(path, dimensions=3, max_bytes=1 << 20))


CIFAR_BATCH = pickle.dumps(
    {b"labels": [1, 2], b"data": np.zeros((2, 3072), dtype=np.uint8), b"batch_label": b"x"}, protocol=2
)


@FUZZ
@given(data=mutated(CIFAR_BATCH))
def test_cifar_batch(data):
    decodes_or_refuses(lambda: _cifar_batch("batch", data, num_classes=10))


def test_cifar_batch_refuses_code_execution():
    class Exploit:
        def __reduce__(self):
            return (print, ("owned",))

    with pytest.raises(DataError, match="builtins.print is not allowed"):
        _cifar_batch("batch", pickle.dumps(Exploit()), num_classes=10)


def tiny_archive() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.USTAR_FORMAT) as archive:
        for name in [f"data_batch_{number}" for number in range(1, 6)] + ["test_batch"]:
            data = pickle.dumps({b"labels": [1], b"data": np.zeros((1, 3072), dtype=np.uint8)}, protocol=2)
            member = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            member.size, member.mtime = len(data), 0
            archive.addfile(member, io.BytesIO(data))
    return buffer.getvalue()


ARCHIVE = tiny_archive()


@FUZZ
@given(data=st.one_of(mutated(ARCHIVE), mutated(gzip.decompress(ARCHIVE)).map(lambda tar: gzip.compress(tar, mtime=0))))
def test_cifar_archive(tmp_path, data):
    path = tmp_path / "archive.tar.gz"
    path.write_bytes(data)
    # The checksum pins these very bytes, so decoding (not verification) is what is fuzzed.
    spec = FileSpec(name="archive.tar.gz", md5=hashlib.md5(data).hexdigest(), size=max(len(data), 1))
    decodes_or_refuses(lambda: read_cifar_archive(path, spec, num_classes=10))


def test_cifar_archive_refuses_path_traversal(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        member = tarfile.TarInfo("../../etc/data_batch_1")
        member.size = 1
        archive.addfile(member, io.BytesIO(b"x"))
    path = tmp_path / "evil.tar.gz"
    path.write_bytes(buffer.getvalue())
    spec = FileSpec(name="evil.tar.gz", md5=hashlib.md5(path.read_bytes()).hexdigest(), size=path.stat().st_size)
    with pytest.raises(DataError, match="unsafe member name '../../etc/data_batch_1'"):
        read_cifar_archive(path, spec, num_classes=10)


def test_cifar_archive_is_not_opened_before_its_checksum_verifies(tmp_path):
    path = tmp_path / "archive.tar.gz"
    path.write_bytes(ARCHIVE)
    wrong = FileSpec(name="archive.tar.gz", md5="0" * 32, size=len(ARCHIVE))
    with pytest.raises(DataError, match="md5 .*, expected 0{32}"):
        read_cifar_archive(path, wrong, num_classes=10)


CSV_TEXT = b"6,148,72,35,0,33.6,0.627,50,1\n1,85,66,29,0,26.6,0.351,31,0\n"
LAYOUT = CsvLayout(delimiter=",", header_rows=0, feature_columns=list(range(8)), label_column=8)


@FUZZ
@given(data=st.one_of(mutated(CSV_TEXT), st.text(max_size=200).map(str.encode)))
def test_csv_table(tmp_path, data):
    path = tmp_path / "table.csv"
    path.write_bytes(data)
    decodes_or_refuses(lambda: read_csv_table(path, LAYOUT, num_classes=2))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"1,2,3\n", "line 1: 3 columns, expected 9"),
        (b"1,2,3,4,5,6,7,x,1\n", "line 1: 'x' is not a number"),
        (b"1,2,3,4,5,6,7,nan,1\n", "line 1: 'nan' is not a finite number"),
        (b"1,2,3,4,5,6,7,8,2\n", "line 1: label '2', expected an integer from 0 to 1"),
        (b"", "no data rows"),
        (b"\xff\xfe", "not UTF-8 text"),
    ],
)
def test_csv_problems_are_named(tmp_path, text, message):
    path = tmp_path / "table.csv"
    path.write_bytes(text)
    with pytest.raises(DataError, match=message):
        read_csv_table(path, LAYOUT, num_classes=2)
