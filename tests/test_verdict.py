"""How `mlp reproduce` reaches each of its three verdicts, and the tolerance files it judges by."""

from __future__ import annotations

import json

import pytest
import yaml

from pipeline.config import compose, parse_params
from pipeline.errors import PipelineError
from pipeline.reproduce.verdict import (
    EQUIVALENT,
    EXIT_STATUS,
    IDENTICAL,
    MISMATCH,
    Comparison,
    Reproduction,
    configuration_sha256,
    read_tolerances,
    tolerance_file,
)

RECORDED_HASH, OTHER_HASH = "a" * 64, "b" * 64
ANOTHER_CPU = ["cpu.isa -avx512f -avx512_bf16", "threads.intra_op 8 -> 2"]


def reproduction(accuracy: float, weights: str, *, environment=(), tolerance=None, data_matches=True):
    comparisons = [
        Comparison("test_accuracy", 0.9822, accuracy, tolerance=tolerance),
        Comparison("model.weights_sha256", RECORDED_HASH, weights, kind="weights"),
        Comparison("data train.gz", "c" * 64, "c" * 64 if data_matches else "d" * 64, kind="data"),
    ]
    source = "measured across seeds in reports/tolerance/x.json" if tolerance is not None else None
    return Reproduction("new", comparisons, list(environment), "lineage/environment.json", source)


def test_the_three_verdicts_have_distinct_exit_statuses():
    assert EXIT_STATUS == {IDENTICAL: 0, EQUIVALENT: 3, MISMATCH: 1}


def test_identical_results_are_identical_whatever_the_environment():
    assert reproduction(0.9822, RECORDED_HASH).judge() == (IDENTICAL, IDENTICAL)
    verdict, reason = reproduction(0.9822, RECORDED_HASH, environment=ANOTHER_CPU).judge()
    assert verdict == IDENTICAL and "although the environment differs: cpu.isa, threads.intra_op" in reason


def test_a_difference_in_an_identical_environment_is_a_real_problem_even_within_tolerance():
    verdict, reason = reproduction(0.9823, OTHER_HASH, tolerance=0.01).judge()
    assert verdict == MISMATCH and "identical environment" in reason and "a real problem" in reason


def test_another_environment_within_tolerance_is_equivalent():
    result = reproduction(0.9830, OTHER_HASH, environment=ANOTHER_CPU, tolerance=0.0021)
    reason = "equivalent within tolerance (environment differs: cpu.isa, threads.intra_op)"
    assert result.judge() == (EQUIVALENT, reason)
    report = result.report("old")
    assert "    cpu.isa -avx512f -avx512_bf16" in report and "    threads.intra_op 8 -> 2" in report
    assert "bitwise identical weights are not expected" in report
    assert "within 0.0021" in report and "reports/tolerance/x.json" in report
    assert "differs (expected)" in report and "MISMATCH" not in report


def test_another_environment_beyond_tolerance_is_a_mismatch():
    verdict, reason = reproduction(0.9790, OTHER_HASH, environment=ANOTHER_CPU, tolerance=0.0021).judge()
    assert verdict == MISMATCH and "test_accuracy moved further than another seed moves it" in reason


def test_another_environment_without_a_tolerance_cannot_be_judged_equivalent():
    verdict, reason = reproduction(0.9823, OTHER_HASH, environment=ANOTHER_CPU).judge()
    assert verdict == MISMATCH and "mlp tolerance" in reason and "--tolerance" in reason


def test_other_data_is_a_mismatch_in_any_environment():
    result = reproduction(0.9822, OTHER_HASH, environment=ANOTHER_CPU, tolerance=0.01, data_matches=False)
    assert result.judge() == (MISMATCH, "MISMATCH: the data differ from the recorded run's")


@pytest.fixture(scope="module")
def params():
    return parse_params(compose())


def test_the_tolerance_key_ignores_seed_and_names_but_not_the_training(params):
    key = configuration_sha256(params)
    assert configuration_sha256(params.model_copy(update={"seed": 7})) == key
    renamed = params.model_copy(update={"mlflow": params.mlflow.model_copy(update={"experiment_name": "other"})})
    assert configuration_sha256(renamed) == key
    wider = params.model_copy(update={"model": params.model.model_copy(update={"hidden_units": [512, 512]})})
    assert configuration_sha256(wider) != key
    assert tolerance_file(params).as_posix() == f"reports/tolerance/{key}.json"


def test_tolerance_files_are_read_and_a_damaged_one_named(params, tmp_path):
    assert read_tolerances(params, tmp_path) is None
    path = tolerance_file(params, tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"tolerance": {"test_accuracy": 0.0021, "test_loss": 0.004}}))
    assert read_tolerances(params, tmp_path) == {"test_accuracy": 0.0021, "test_loss": 0.004}
    path.write_text(yaml.safe_dump(["not", "a", "tolerance"]))
    with pytest.raises(PipelineError, match=r"is not a tolerance file .*measure it again with `mlp tolerance`"):
        read_tolerances(params, tmp_path)
