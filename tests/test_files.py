"""The one way the pipeline writes a file: beside its final name, then renamed into place."""

import os
import stat

import pytest

from pipeline.files import PRIVATE, atomic_path, write_text


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_an_output_gets_the_mode_open_would_give_it_and_a_private_file_stays_private(tmp_path, umask_022):
    write_text(tmp_path / "metrics.json", "{}\n")
    write_text(tmp_path / "password", "secret\n", mode=PRIVATE)
    (tmp_path / "loosened").write_text("old")
    (tmp_path / "loosened").chmod(0o644)
    write_text(tmp_path / "loosened", "new", mode=PRIVATE)
    assert stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "password").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "loosened").stat().st_mode) == 0o600
    assert sorted(path.name for path in tmp_path.iterdir()) == ["loosened", "metrics.json", "password"]


def test_a_failed_write_leaves_nothing_under_the_final_name(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "model.keras") as temporary:
        assert temporary.suffix == ".keras" and temporary.parent == tmp_path
        temporary.write_bytes(b"half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
