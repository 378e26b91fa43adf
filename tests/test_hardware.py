"""The hardware and numerics fingerprint, and the determinism modes' settings, on this machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import REPOSITORY

from pipeline import determinism, hardware
from pipeline.config import ConfigError, compose, parse_params


@pytest.fixture(scope="module")
def record():
    return hardware.fingerprint()


def test_fingerprint_names_what_chooses_the_kernels(record):
    cpu = record["cpu"]
    assert cpu["vendor"] and cpu["model_name"] and cpu["logical_cores"] >= 1
    assert 1 <= cpu["schedulable_cores"] <= cpu["logical_cores"]
    # TensorFlow's wheel needs AVX, so every machine that runs these tests reports it.
    assert "avx" in cpu["isa"] and cpu["isa_cpuid"]
    assert set(cpu["isa"]) <= set(hardware.KERNEL_FLAGS)
    assert record["threads"]["intra_op"] >= 1 and record["threads"]["inter_op"] >= 1
    assert record["tensorflow"]["version"] and "build_info" in record["tensorflow"]
    assert record["blas"]["name"]
    json.dumps(record)  # stored as a JSON artifact


def test_fingerprint_records_the_onednn_setting(monkeypatch):
    # Whether TensorFlow's oneDNN rewrites are on: this setting, else the CPU's extensions (cpu.isa).
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    assert hardware.fingerprint()["environment"]["TF_ENABLE_ONEDNN_OPTS"] == "0"


def test_fingerprint_keeps_no_path_of_this_machine(record):
    assert str(REPOSITORY) not in json.dumps(record) and sys.prefix not in json.dumps(record)


def test_digest_follows_the_content_not_the_key_order(record):
    reordered = json.loads(json.dumps(record, sort_keys=True))
    assert hardware.digest(reordered) == hardware.digest(record)
    changed = json.loads(json.dumps(record))
    changed["threads"]["intra_op"] += 1
    assert hardware.digest(changed) != hardware.digest(record)


def test_differences_name_each_field_and_what_changed():
    recorded = {"cpu": {"isa": ["avx", "avx2", "avx512f"], "vendor": "AuthenticAMD"}, "threads": {"intra_op": 8}}
    current = {"cpu": {"isa": ["avx", "avx2", "amx_tile"], "vendor": "AuthenticAMD"}, "threads": {"intra_op": 2}}
    assert hardware.differences(recorded, current) == ["cpu.isa -avx512f +amx_tile", "threads.intra_op 8 -> 2"]
    assert hardware.differences(recorded, recorded) == []
    assert hardware.differences({"a": 1}, {}) == ["a 1 -> (none)"]


def test_isa_summary_is_one_short_tag(record):
    assert hardware.isa_summary(record) == ",".join(record["cpu"]["isa"])
    assert hardware.isa_summary({}) == "unknown"


def test_portable_mode_pins_onednn_its_instruction_set_and_the_threads():
    assert determinism.environment_for("host") == {}
    assert determinism.environment_for("portable") == {
        "TF_ENABLE_ONEDNN_OPTS": "0",
        "ONEDNN_MAX_CPU_ISA": "SSE41",
        "TF_NUM_INTRAOP_THREADS": "1",
        "TF_NUM_INTEROP_THREADS": "1",
    }


def test_training_in_portable_mode_without_its_settings_is_refused(monkeypatch):
    for name in determinism.PORTABLE_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    determinism.require("host")
    with pytest.raises(determinism.PipelineError, match="train.determinism portable needs TF_ENABLE_ONEDNN_OPTS=0"):
        determinism.require("portable")
    for name, value in determinism.PORTABLE_ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    determinism.require("portable")


def test_enter_restarts_the_process_with_the_settings_once():
    # No TensorFlow in this child: the restart itself is what is tested.
    code = (
        "import os; from pipeline import determinism; print('start', flush=True); "
        "determinism.enter('portable'); print(os.environ['ONEDNN_MAX_CPU_ISA'], os.environ['TF_NUM_INTRAOP_THREADS'])"
    )
    environment = {name: value for name, value in os.environ.items() if "ONEDNN" not in name}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPOSITORY, env=environment, capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["start", "start", "SSE41", "1"]


def test_determinism_is_a_config_value_with_two_choices():
    params = yaml.safe_load(compose())
    assert params["train"]["determinism"] == "host"
    params["train"]["determinism"] = "portable"
    assert parse_params(yaml.safe_dump(params)).train.determinism == "portable"
    params["train"]["determinism"] = "fast"
    with pytest.raises(ConfigError, match=r"train.determinism = 'fast': Input should be 'host' or 'portable'"):
        parse_params(yaml.safe_dump(params))
    # Configs recorded before the key existed still load, as host.
    del params["train"]["determinism"]
    assert parse_params(yaml.safe_dump(params)).train.determinism == "host"
