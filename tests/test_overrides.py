"""The `config.overrides` tag: the Hydra overrides a user would type, found again from params.yaml alone,
composed back into the same params.yaml by the real Hydra."""

from __future__ import annotations

import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

from pipeline.config import compose
from pipeline.lineage import run_tags
from pipeline.overrides import hydra_overrides, hydra_value


@pytest.mark.parametrize(
    "typed",
    [
        [],
        ["dataset=pima"],
        ["experiment=smoke"],
        ["experiment=brownlee_pima", "model.dropout_rate=0.1"],
        ["optimizer=sgd", "model.hidden_units=[64]", "optimizer.momentum=0.9"],
        ["dataset=cifar10", "dataset.urls=['http://127.0.0.1:8000/cifar 10/']"],
    ],
)
def test_the_overrides_found_from_params_alone_are_the_typed_ones_and_compose_back(typed):
    params = yaml.safe_load(compose(typed))
    found = hydra_overrides(params)
    assert found == typed
    assert yaml.safe_load(compose(found)) == params


@pytest.mark.parametrize(
    "value", [None, True, 0.3, 1e-05, 10, [256, 256], ["0", "1"], "http://127.0.0.1:8000/x/", "it's", "C:\\x\\", "null"]
)
def test_each_value_reads_back_as_itself_on_one_line(value):
    text = hydra_value(value)
    assert "\n" not in text
    assert OverridesParser.create().parse_override(f"key={text}").value() == value


def test_a_very_long_list_of_overrides_is_cut_in_the_tag_and_kept_whole_in_the_record():
    record = {
        "code": {"commit": "0" * 40, "dirty": False},
        "data": {"dataset": "mnist", "sha256": "1" * 64},
        "config": {"overrides": [f"dataset.class_names.{index}=x" for index in range(500)]},
        "environment": {"sha256": "2" * 64, "cpu_isa": "avx2"},
    }
    tag = run_tags(record)["config.overrides"]
    assert len(tag) == 1000 and tag.endswith(" ... (all of them in lineage/lineage.json)")
    assert len(record["config"]["overrides"]) == 500
