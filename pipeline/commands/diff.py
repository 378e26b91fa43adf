"""`mlp diff RUN_A RUN_B [--json]`: what differs between two runs and whether their test accuracies really do
(McNemar's exact test, beside the seed spread): docs/reproducibility.md, "Comparing two runs"."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os

from mlflow.exceptions import MlflowException
from scipy.stats import binomtest

from pipeline.config import changed, flatten, parse_params
from pipeline.errors import PipelineError
from pipeline.git import git_or_empty
from pipeline.lineage import ENVIRONMENT_ARTIFACT
from pipeline.reproduce.record import PARAMS_ARTIFACT, artifact_text, json_artifact
from pipeline.reproduce.verdict import read_tolerances
from pipeline.tracking import TEST_SET_TAG, client

# The evaluate stage's per-example (actual, predicted) rows, one per test example.
PREDICTIONS_ARTIFACT = "evaluation/confusion_matrix.csv"
# Below this p-value McNemar's test calls the difference in accuracy real.
SIGNIFICANCE = 0.05


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_a", metavar="RUN_A", help="an MLflow run id (the reference)")
    parser.add_argument("run_b", metavar="RUN_B", help="an MLflow run id (compared with RUN_A)")
    parser.add_argument("--json", action="store_true", help="print the comparison as one JSON object")


def run(arguments: argparse.Namespace) -> None:
    comparison = compare(arguments.run_a, arguments.run_b)
    print(json.dumps(comparison, indent=2) if arguments.json else format_text(comparison))


def compare(run_a: str, run_b: str) -> dict:
    # A few small reads of artifacts: MLflow's progress bars would bury the comparison.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    store = client()
    try:
        a, b = store.get_run(run_a), store.get_run(run_b)
    except MlflowException as error:
        raise PipelineError(f"{error.message.splitlines()[0]}: give the ids of two runs of this store") from None
    data = [{key: run.data.tags.get(key) for key in ("dataset", "data.sha256")} for run in (a, b)]
    environments = [flatten(json_artifact(run_id, ENVIRONMENT_ARTIFACT) or {}) for run_id in (run_a, run_b)]
    metrics = {}
    for name in sorted(key for key in {*a.data.metrics, *b.data.metrics} if key.startswith("test_")):
        values = {"a": a.data.metrics.get(name), "b": b.data.metrics.get(name)}
        metrics[name] = {**values, "delta": None if None in values.values() else values["b"] - values["a"]}
    # The digests of the test sets the evaluate stage scored the runs on.
    test_sets = [run.data.tags.get(TEST_SET_TAG) for run in (a, b)]
    same_test_set = test_sets[0] is not None and test_sets[0] == test_sets[1]
    comparison = {
        "runs": {"a": run_a, "b": run_b},
        "params": changed(a.data.params, b.data.params),
        "code": code_difference(a.data.tags.get("git.commit"), b.data.tags.get("git.commit")),
        "data": changed(*data),
        "environment": changed(*environments),
        "metrics": metrics,
        "significance": mcnemar(predictions(run_a), predictions(run_b)) if same_test_set else None,
        "seed_spread": seed_spread(artifact_text(run_a, PARAMS_ARTIFACT)),
    }
    comparison["verdict"] = verdict(comparison, same_test_set=same_test_set)
    return comparison


def predictions(run_id: str) -> list[tuple[str, str]]:
    """The run's (actual, predicted) rows, without the header; [] when it logged none."""
    rows = list(csv.reader(io.StringIO(artifact_text(run_id, PREDICTIONS_ARTIFACT) or "")))[1:]
    return [(row[0], row[1]) for row in rows]


def code_difference(commit_a: str | None, commit_b: str | None) -> dict:
    """The two commits and, when this repository has both, the files changed between them."""
    difference = {"a": commit_a, "b": commit_b, "files": []}
    if commit_a and commit_b and commit_a != commit_b:
        difference["files"] = git_or_empty("diff", "--name-only", commit_a, commit_b).splitlines()
    return difference


def mcnemar(predictions_a: list[tuple[str, str]], predictions_b: list[tuple[str, str]]) -> dict:
    """McNemar's exact test on paired (actual, predicted) rows: only the examples one run gets right and the
    other wrong count; under "equally accurate" each such example is a fair coin's toss."""
    if [actual for actual, _ in predictions_a] != [actual for actual, _ in predictions_b]:
        raise PipelineError("the two runs' predictions do not pair: their test examples differ")
    right = [[actual == predicted for actual, predicted in rows] for rows in (predictions_a, predictions_b)]
    only_a = sum(a and not b for a, b in zip(*right, strict=True))
    only_b = sum(b and not a for a, b in zip(*right, strict=True))
    discordant = only_a + only_b
    p_value = binomtest(min(only_a, only_b), discordant, 0.5).pvalue if discordant else 1.0
    return {"examples": len(predictions_a), "only_a_right": only_a, "only_b_right": only_b, "p_value": float(p_value)}


def seed_spread(params_text: str | None) -> float | None:
    """The test-accuracy range `mlp tolerance` measured across seeds for this configuration, if it has."""
    if params_text is None:
        return None
    try:
        return (read_tolerances(parse_params(params_text)) or {}).get("test_accuracy")
    except PipelineError:
        return None


def verdict(comparison: dict, *, same_test_set: bool) -> str:
    accuracy = comparison["metrics"].get("test_accuracy", {})
    if accuracy.get("delta") is None:
        return "no test accuracy to compare: evaluate both runs first"
    points = 100 * accuracy["delta"]
    if not same_test_set:
        return f"B - A = {points:+.2f} points, but on different test sets: not comparable, no p-value"
    p_value = comparison["significance"]["p_value"]
    spread = comparison["seed_spread"]
    within = spread is not None and abs(accuracy["delta"]) <= spread
    beyond = "" if spread is None else f"; {'within' if within else 'beyond'} the seed spread of {100 * spread:.2f}"
    if p_value >= SIGNIFICANCE or within:
        return f"not distinguishable from seed noise: B - A = {points:+.2f} points (McNemar p = {p_value:.3g}{beyond})"
    better, worse = ("B", "A") if points > 0 else ("A", "B")
    return f"{better} is better than {worse} by {abs(points):.2f} points (McNemar p = {p_value:.3g}{beyond})"


def format_text(comparison: dict) -> str:
    lines = [f"A = {comparison['runs']['a']}", f"B = {comparison['runs']['b']}", ""]
    for section in ("params", "data", "environment"):
        lines.append(f"{section}: " + ("same" if not comparison[section] else f"{len(comparison[section])} changed"))
        lines += [f"  {key}: {change['a']} -> {change['b']}" for key, change in comparison[section].items()]
    code = comparison["code"]
    lines.append("code: same commit" if code["a"] == code["b"] else f"code: {code['a']} -> {code['b']}")
    lines += [f"  {name}" for name in code["files"]]
    lines.append("test metrics:")
    for name, values in comparison["metrics"].items():
        delta = "" if values["delta"] is None else f" ({values['delta']:+.4f})"
        shown = ["-" if value is None else f"{value:.4f}" for value in (values["a"], values["b"])]
        lines.append(f"  {name}: {shown[0]} -> {shown[1]}{delta}")
    test = comparison["significance"]
    if test:
        lines.append(
            f"paired test examples: {test['examples']:,}; only A right {test['only_a_right']}, "
            f"only B right {test['only_b_right']}"
        )
    return "\n".join([*lines, "", comparison["verdict"]])
