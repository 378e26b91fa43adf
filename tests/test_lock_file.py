"""The committed dvc.lock matches the committed code, params and reports, so a fresh
clone with the data present has nothing to re-run."""

from __future__ import annotations

import hashlib

import pytest
import yaml
from conftest import REPOSITORY

from pipeline.config import flatten

LOCK = yaml.safe_load((REPOSITORY / "dvc.lock").read_text())
STAGES = yaml.safe_load((REPOSITORY / "dvc.yaml").read_text())["stages"]


def tracked_entries():
    """(stage, kind, entry) for every file dvc.lock records that git keeps (code, lock file, reports)."""
    for stage, record in LOCK["stages"].items():
        for kind in ("deps", "outs"):
            for entry in record.get(kind, []):
                if not entry["path"].startswith("data/"):
                    yield pytest.param(stage, kind, entry, id=f"{stage}:{entry['path']}")


def test_every_stage_of_dvc_yaml_is_locked_with_its_command():
    assert set(LOCK["stages"]) == set(STAGES)
    for stage, record in LOCK["stages"].items():
        assert record["cmd"] == STAGES[stage]["cmd"]


@pytest.mark.parametrize(("stage", "kind", "entry"), list(tracked_entries()))
def test_recorded_md5_is_the_files(stage, kind, entry):
    data = (REPOSITORY / entry["path"]).read_bytes()
    assert hashlib.md5(data).hexdigest() == entry["md5"], (
        f"dvc.lock is stale: {entry['path']} ({stage} {kind}) changed since the pipeline last ran; "
        "run `dvc repro` and commit dvc.lock with the reports"
    )


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_recorded_params_are_params_yaml(stage):
    params = yaml.safe_load((REPOSITORY / "params.yaml").read_text())
    recorded = LOCK["stages"][stage].get("params", {}).get("params.yaml", {})
    flat = flatten(params)
    for key, value in recorded.items():
        current = params if key == "" else flat.get(key, _section(params, key))
        assert current == value, f"dvc.lock records {key} = {value!r} for {stage}, params.yaml has {current!r}"
    declared = [entry for entry in STAGES[stage].get("params", []) if isinstance(entry, str)]
    assert set(declared) <= set(recorded)


def _section(params: dict, key: str):
    value = params
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value
