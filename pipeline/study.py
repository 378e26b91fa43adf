"""Re-run a published table of configurations through the pipeline and compare.

    python -m pipeline.study atienza_table_1_3_2

A study (conf/study/<name>.yaml) lists rows in the publication's own notation
(layers, regularizer, optimizer, ReLU or not) with the published training and
test accuracy. Each row becomes one DVC experiment, queued with
`dvc exp run --queue` and run by DVC's queue one at a time, so `dvc exp show`
lists them and every row is an MLflow run in the study's MLflow experiment.
The report (Markdown, CSV and a plot, in reports/studies/<name>/) puts the
measured accuracies beside the published ones.

Interrupted (Ctrl+C, SIGTERM), the study stops its queued and running rows;
run the same command again and it continues: rows whose DVC experiment exists
for the current commit are not trained again. Results belong to the commit
they ran from, so after a new commit every row runs again.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import Field, ValidationError, field_validator

from pipeline.config import CONFIG_DIRECTORY, StrictModel, compose, parse_params
from pipeline.errors import ConfigError, PipelineError, run_stage

logger = logging.getLogger(__name__)

STUDY_DIRECTORY = CONFIG_DIRECTORY / "study"
REPORT_DIRECTORY = Path("reports/studies")
METRICS_FILE = "reports/metrics.json"
HISTORY_FILE = "reports/training_history.csv"
# Training accuracy gained over the last epochs: near 0 once a row has converged.
LATE_EPOCHS = 5

OPTIMIZER_NAMES = {"SGD": "sgd", "Adam": "adam", "RMSprop": "rmsprop"}
REGULARIZER = re.compile(r"^(none|L2\((?P<l2>[0-9.e-]+)\)|Dropout\((?P<dropout>0?\.[0-9]+)\))$")
Percent = Annotated[float, Field(ge=0.0, le=100.0)]


class StudyRow(StrictModel):
    row: str = Field(pattern=r"^[A-Za-z0-9]+$")
    layers: str = Field(pattern=r"^[1-9][0-9]*(-[1-9][0-9]*)*$")  # units of the hidden Dense layers
    regularizer: str  # none, L2(<factor>) or Dropout(<rate>), on every hidden layer
    optimizer: Literal[tuple(OPTIMIZER_NAMES)]  # type: ignore[valid-type]
    relu: bool  # false: linear hidden layers
    published_train: Percent
    published_test: Percent
    note: str | None = None

    @field_validator("regularizer")
    @classmethod
    def known_regularizer(cls, value: str) -> str:
        if not REGULARIZER.match(value):
            raise ValueError(f"{value!r} is not none, L2(<factor>) or Dropout(<rate below 1>)")
        return value

    def overrides(self) -> list[str]:
        """The Hydra overrides (`dvc exp run -S`) that configure this row."""
        match = REGULARIZER.match(self.regularizer)
        units = ",".join(self.layers.split("-"))
        return [
            f"optimizer={OPTIMIZER_NAMES[self.optimizer]}",
            f"model.hidden_units=[{units}]",
            f"model.activation={'relu' if self.relu else 'linear'}",
            f"model.dropout_rate={float(match['dropout'] or 0.0)}",
            f"model.l2_weight_decay={float(match['l2'] or 0.0)}",
        ]


class Study(StrictModel):
    title: str
    # Composed with every row, before the row's own overrides.
    overrides: list[str]
    rows: list[StudyRow] = Field(min_length=1)
    # Written into the report under the table: what explains the differences.
    discussion: str | None = None

    @field_validator("rows")
    @classmethod
    def unique_rows(cls, rows: list[StudyRow]) -> list[StudyRow]:
        names = [row.row for row in rows]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"row names must be unique; repeated: {', '.join(duplicates)}")
        return rows


def study_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        return path
    return STUDY_DIRECTORY / f"{name_or_path}.yaml"


def load_study(path: Path) -> Study:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        known = ", ".join(sorted(item.stem for item in STUDY_DIRECTORY.glob("*.yaml"))) or "none"
        raise ConfigError(f"study {path} not found; studies in {STUDY_DIRECTORY}/: {known}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    try:
        return Study.model_validate(raw)
    except ValidationError as error:
        problems = "\n".join(
            f"  {'.'.join(str(part) for part in problem['loc'])}: {problem['msg']}" for problem in error.errors()
        )
        raise ConfigError(f"{path} is not a valid study:\n{problems}") from None


def experiment_name(study_name: str, row: StudyRow) -> str:
    """The DVC experiment (and MLflow run) name of a row, e.g. atienza-table-1-3-2-row-07."""
    prefix = study_name.replace("_", "-")
    return f"{prefix}-row-{row.row.zfill(2)}"


def check_rows(study: Study) -> None:
    """Compose and validate every row before anything is queued: a bad row fails the study at once."""
    for row in study.rows:
        overrides = study.overrides + row.overrides()
        try:
            parse_params(compose(overrides), Path(f"row {row.row}"))
        except ConfigError as error:
            raise ConfigError(f"{error}\n(overrides: {' '.join(overrides)})") from None
        except Exception as error:  # Hydra's own errors: an unknown group or key
            raise ConfigError(f"row {row.row}: {' '.join(overrides)} does not compose: {error}") from None


def dvc(*arguments: str) -> subprocess.CompletedProcess:
    """Run a DVC command with this interpreter's DVC, output streamed to ours."""
    return subprocess.run([sys.executable, "-m", "dvc", *arguments], check=False)


def current_commit() -> str:
    result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PipelineError("a study runs from a git commit: commit the project first")
    return result.stdout.strip()


def resolve(revision: str) -> str:
    result = subprocess.run(["git", "rev-parse", "--verify", f"{revision}^{{commit}}"], capture_output=True, text=True)
    if result.returncode != 0:
        raise ConfigError(f"--baseline {revision}: not a commit of this repository")
    return result.stdout.strip()


def finished_experiments(baseline: str) -> dict[str, str]:
    """{experiment name: experiment commit} of the DVC experiments run from `baseline`."""
    # Read from git's refs, as `dvc exp list` does, but without taking DVC's
    # repository lock: a report can be written while a queue runs.
    from dvc.repo.experiments.refs import ExpRefInfo

    listed = subprocess.run(
        ["git", "for-each-ref", "--format=%(refname) %(objectname)", "refs/exps/"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    experiments = {}
    for line in listed:
        reference, sha = line.split()
        with contextlib.suppress(ValueError):  # refs/exps/ also holds DVC's stashes
            info = ExpRefInfo.from_ref(reference)
            if info.baseline_sha == baseline:
                experiments[info.name] = sha
    return experiments


def queue_entries(names: set[str]) -> dict[str, str]:
    """{name: state} of these experiments' entries in DVC's queue: queued, running or failed."""
    from dvc.repo import Repo

    with Repo(".") as repo:
        queue = repo.experiments.celery_queue
        states = {entry.name: "queued" for entry in queue.iter_queued()}
        states.update({entry.name: "running" for entry in queue.iter_active()})
        states.update({result.entry.name: "failed" for result in queue.iter_failed()})
    return {name: state for name, state in states.items() if name in names}


def clear_queue(names: set[str]) -> None:
    """Stop and remove these experiments' queue entries (an earlier, interrupted attempt)."""
    entries = queue_entries(names)
    running = sorted(name for name, state in entries.items() if state == "running")
    if running:
        # SIGINT, not SIGKILL: the stage ends its MLflow run as KILLED instead of leaving it RUNNING.
        dvc("queue", "kill", *running)
    if entries:
        # A killed task becomes failed a moment later; wait so it can be removed too.
        deadline = time.monotonic() + 60
        while any(state == "running" for state in queue_entries(names).values()) and time.monotonic() < deadline:
            time.sleep(1)
        leftover = sorted(queue_entries(names))
        if leftover:
            dvc("queue", "remove", *leftover)


def run_rows(study: Study, study_name: str, pending: list[StudyRow]) -> None:
    """Queue the pending rows as DVC experiments and run the queue, one row at a time."""
    names = {experiment_name(study_name, row) for row in pending}
    clear_queue(names)
    for row in pending:
        settings = [argument for override in study.overrides + row.overrides() for argument in ("-S", override)]
        result = dvc("exp", "run", "--queue", "--name", experiment_name(study_name, row), *settings)
        if result.returncode != 0:
            raise PipelineError(f"could not queue row {row.row} ({experiment_name(study_name, row)})")
    try:
        # One job: rows share the CPU otherwise, and their wall times would not compare.
        result = dvc("exp", "run", "--run-all", "--jobs", "1")
    except KeyboardInterrupt:
        logger.warning("interrupted: stopping the study's queued and running rows")
        clear_queue(names)
        raise
    if result.returncode != 0:
        logger.warning("some rows failed; the report lists them as missing")


def committed_file(commit: str, path: str) -> str:
    return subprocess.run(["git", "show", f"{commit}:{path}"], capture_output=True, text=True, check=True).stdout


def row_result(study_name: str, row: StudyRow, commit: str | None) -> dict:
    """Measured figures of a row from its experiment commit's metrics and its MLflow run."""
    from pipeline.tracking import client

    result = {"row": row, "experiment": experiment_name(study_name, row), "commit": commit}
    if commit is None:
        return result
    metrics = json.loads(committed_file(commit, METRICS_FILE))
    history = list(csv.DictReader(committed_file(commit, HISTORY_FILE).splitlines()))
    accuracy = [100 * float(epoch["accuracy"]) for epoch in history]
    run = client().get_run(metrics["mlflow_run_id"])
    result.update(
        measured_train=100 * metrics["final_epoch"]["accuracy"],
        late_gain=accuracy[-1] - accuracy[-1 - LATE_EPOCHS] if len(accuracy) > LATE_EPOCHS else None,
        # The first epoch whose training accuracy reached the published one.
        reached_at=next((epoch for epoch, value in enumerate(accuracy, start=1) if value >= row.published_train), None),
        measured_test=100 * metrics["test"]["accuracy"],
        seconds=(run.info.end_time - run.info.start_time) / 1000,
        start=run.info.start_time / 1000,
        end=run.info.end_time / 1000,
        mlflow_run_id=metrics["mlflow_run_id"],
        weights_sha256=metrics["weights_sha256"],
        machine=f"{run.data.tags.get('cpu.model', 'unknown CPU')}, {run.data.tags.get('cpu.count', '?')} cores",
        versions=", ".join(
            f"{package} {run.data.tags[f'package.{package}']}"
            for package in ("tensorflow-cpu", "keras")
            if f"package.{package}" in run.data.tags
        ),
    )
    return result


CSV_COLUMNS = (
    "row",
    "layers",
    "regularizer",
    "optimizer",
    "relu",
    "published_train",
    "measured_train",
    "train_difference",
    "train_gain_last_epochs",
    "epoch_reaching_published_train",
    "published_test",
    "measured_test",
    "test_difference",
    "wall_seconds",
    "experiment",
    "mlflow_run_id",
    "weights_sha256",
)
# The Markdown table's figures: the CSV's, up to the identifiers.
TABLE_COLUMNS = CSV_COLUMNS[: CSV_COLUMNS.index("experiment")]


def csv_record(result: dict) -> dict:
    row: StudyRow = result["row"]
    done = "measured_test" in result
    return {
        "row": row.row,
        "layers": row.layers,
        "regularizer": row.regularizer,
        "optimizer": row.optimizer,
        "relu": "yes" if row.relu else "none",
        "published_train": f"{row.published_train:.2f}",
        "measured_train": f"{result['measured_train']:.2f}" if done else "",
        "train_difference": f"{result['measured_train'] - row.published_train:+.2f}" if done else "",
        "train_gain_last_epochs": f"{result['late_gain']:+.2f}" if done and result["late_gain"] is not None else "",
        "epoch_reaching_published_train": str(result["reached_at"] or "never") if done else "",
        "published_test": f"{row.published_test:.2f}",
        "measured_test": f"{result['measured_test']:.2f}" if done else "",
        "test_difference": f"{result['measured_test'] - row.published_test:+.2f}" if done else "",
        "wall_seconds": f"{result['seconds']:.0f}" if done else "",
        "experiment": result["experiment"],
        "mlflow_run_id": result.get("mlflow_run_id", ""),
        "weights_sha256": result.get("weights_sha256", ""),
    }


def summary(results: list[dict]) -> dict:
    done = [result for result in results if "measured_test" in result]
    differences = [abs(result["measured_test"] - result["row"].published_test) for result in done]
    by_optimizer = {}
    for optimizer in dict.fromkeys(result["row"].optimizer for result in done):
        gaps = [abs(r["measured_test"] - r["row"].published_test) for r in done if r["row"].optimizer == optimizer]
        by_optimizer[optimizer] = (sum(gaps) / len(gaps), len(gaps))
    return {
        "rows": len(results),
        "measured": len(done),
        "mean_absolute_test_difference": sum(differences) / len(differences) if differences else None,
        "by_optimizer": by_optimizer,
        "total_seconds": sum(result["seconds"] for result in done),
        "span_seconds": max(result["end"] for result in done) - min(result["start"] for result in done)
        if done
        else 0.0,
        "finished": datetime.fromtimestamp(max(result["end"] for result in done), UTC) if done else None,
        "machines": sorted({result["machine"] for result in done}),
        "versions": sorted({result["versions"] for result in done}),
    }


def write_csv(records: list[dict], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(records)


def write_markdown(
    study: Study, study_name: str, results: list[dict], records: list[dict], facts: dict, commit: str, path: Path
) -> None:
    mean = facts["mean_absolute_test_difference"]
    lines = [
        f"# {study.title}",
        "",
        f"Written by `python -m pipeline.study {study_name}` from the DVC experiments of commit `{commit[:12]}`",
        f"and their MLflow runs. Every row adds its own overrides to `{' '.join(study.overrides)}`.",
        "",
        f"- Rows measured: {facts['measured']} of {facts['rows']}",
        "- Mean absolute difference in test accuracy from the publication: "
        + (f"{mean:.2f} percentage points" if mean is not None else "n/a")
        + "".join(
            f"{'; by optimizer: ' if index == 0 else ', '}{optimizer} {gap:.2f} ({count} row{'s' if count > 1 else ''})"
            for index, (optimizer, (gap, count)) in enumerate(facts["by_optimizer"].items())
        ),
        f"- Last row finished: {facts['finished']:%Y-%m-%d %H:%M} UTC" if facts["finished"] else "- Not run yet",
        f"- Machine: {'; '.join(facts['machines']) or 'n/a'}",
        f"- Software: {'; '.join(facts['versions']) or 'n/a'}",
        f"- Total time: {facts['total_seconds'] / 60:.1f} min of training and evaluation "
        f"(sum of the rows' MLflow run durations); first row start to last row end: "
        f"{facts['span_seconds'] / 60:.1f} min",
        "",
        "| row | layers | regularizer | optimizer | ReLU | train % published | train % measured | difference "
        f"| train % gained in the last {LATE_EPOCHS} epochs | epoch reaching the published train % "
        "| test % published | test % measured | difference | wall time (s) | DVC experiment |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for record in records:
        missing = "not run" if not record["measured_test"] else "n/a"
        lines.append(
            "| " + " | ".join(record[column] or missing for column in TABLE_COLUMNS) + f" | `{record['experiment']}` |"
        )
    notes = [f"- Row {result['row'].row}: {result['row'].note}" for result in results if result["row"].note]
    if notes:
        lines += ["", *notes]
    lines += ["", "![Measured against published test accuracy](test_accuracy.png)", ""]
    if study.discussion:
        lines += ["## Discussion", "", study.discussion.strip(), ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def plot(results: list[dict], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [result for result in results if "measured_test" in result]
    figure, axis = plt.subplots(figsize=(6.5, 6))
    if done:
        published = [result["row"].published_test for result in done]
        measured = [result["measured_test"] for result in done]
        low, high = min(published + measured) - 0.5, max(published + measured) + 0.5
        axis.plot([low, high], [low, high], color="grey", linestyle="--", label="measured = published")
        for optimizer in dict.fromkeys(result["row"].optimizer for result in done):
            points = [
                (x, y)
                for result, x, y in zip(done, published, measured, strict=True)
                if result["row"].optimizer == optimizer
            ]
            axis.scatter(*zip(*points, strict=True), zorder=3, label=optimizer)
        for result, x, y in zip(done, published, measured, strict=True):
            axis.annotate(result["row"].row, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        axis.set_xlim(low, high)
        axis.set_ylim(low, high)
        axis.legend(loc="upper left")
    axis.set_xlabel("published test accuracy (%)")
    axis.set_ylabel("measured test accuracy (%)")
    axis.set_title(title, fontsize=10)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def write_report(study: Study, study_name: str, results: list[dict], commit: str, directory: Path) -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    facts = summary(results)
    records = [csv_record(result) for result in results]
    write_csv(records, directory / "table.csv")
    write_markdown(study, study_name, results, records, facts, commit, directory / "README.md")
    plot(results, study.title, directory / "test_accuracy.png")
    return facts


def main() -> None:
    parser = argparse.ArgumentParser(description="Run a study's rows as DVC experiments and report the results.")
    parser.add_argument("study", help="a study in conf/study/ (e.g. atienza_table_1_3_2) or a path to a study file")
    parser.add_argument(
        "--report-only", action="store_true", help="write the report from the rows already run; train nothing"
    )
    parser.add_argument(
        "--baseline",
        metavar="REVISION",
        help="with --report-only: report the experiments run from this commit (default: the current one)",
    )
    arguments = parser.parse_args()
    path = study_path(arguments.study)
    study = load_study(path)
    study_name = path.stem
    check_rows(study)
    commit = current_commit()
    if arguments.baseline:
        if not arguments.report_only:
            raise ConfigError("--baseline reports earlier runs: use it with --report-only")
        commit = resolve(arguments.baseline)

    done = finished_experiments(commit)
    pending = [row for row in study.rows if experiment_name(study_name, row) not in done]
    logger.info(
        "%s: %d of %d rows already run from commit %s",
        study_name,
        len(study.rows) - len(pending),
        len(study.rows),
        commit[:12],
    )
    if pending and not arguments.report_only:
        run_rows(study, study_name, pending)
        done = finished_experiments(commit)

    results = [row_result(study_name, row, done.get(experiment_name(study_name, row))) for row in study.rows]
    directory = REPORT_DIRECTORY / study_name
    facts = write_report(study, study_name, results, commit, directory)
    logger.info("report: %s (%d of %d rows measured)", directory / "README.md", facts["measured"], facts["rows"])
    missing = [result["experiment"] for result in results if "measured_test" not in result]
    if missing and not arguments.report_only:
        raise PipelineError(f"rows not run: {', '.join(missing)}; run the same command again to retry them")


if __name__ == "__main__":
    run_stage(main)
