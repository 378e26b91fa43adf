"""A study's report in reports/studies/<name>/: the measured accuracies beside the published ones.

table.csv holds one record per row, README.md the same figures as a Markdown
table with a summary, the rows' notes and the study's discussion, and
test_accuracy.png plots measured against published test accuracy.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import matplotlib.pyplot as plt

from pipeline.figures import save_figure
from pipeline.files import write_text
from pipeline.paths import STUDY_REPORTS_DIRECTORY
from pipeline.study.schema import LATE_EPOCHS, Measured, RowResult, Study, StudyRow

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
TABLE_HEADER = (
    "| row | layers | regularizer | optimizer | ReLU | train % published | train % measured | difference "
    f"| train % gained in the last {LATE_EPOCHS} epochs | epoch reaching the published train % "
    "| test % published | test % measured | difference | wall time (s) | DVC experiment |"
)
TABLE_ALIGNMENT = "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"


@dataclass(frozen=True)
class Summary:
    rows: int
    measured: int
    mean_absolute_test_difference: float | None  # percentage points
    by_optimizer: dict[str, tuple[float, int]]  # {optimizer: (mean absolute test difference, rows)}
    total_seconds: float  # the sum of the rows' MLflow run durations
    span_seconds: float  # first row start to last row end
    finished: datetime | None
    machines: list[str]
    versions: list[str]


def report_directory(study_name: str) -> Path:
    return STUDY_REPORTS_DIRECTORY / study_name


def measured_rows(results: list[RowResult]) -> list[tuple[StudyRow, Measured]]:
    return [(result.row, result.measured) for result in results if result.measured is not None]


def summary(results: list[RowResult]) -> Summary:
    done = measured_rows(results)
    by_optimizer = {}
    for optimizer in dict.fromkeys(row.optimizer for row, _ in done):
        gaps = [
            abs(measured.measured_test - row.published_test) for row, measured in done if row.optimizer == optimizer
        ]
        by_optimizer[optimizer] = (sum(gaps) / len(gaps), len(gaps))
    differences = [abs(measured.measured_test - row.published_test) for row, measured in done]
    starts = [measured.start for _, measured in done]
    ends = [measured.end for _, measured in done]
    return Summary(
        rows=len(results),
        measured=len(done),
        mean_absolute_test_difference=sum(differences) / len(differences) if differences else None,
        by_optimizer=by_optimizer,
        total_seconds=sum(measured.seconds for _, measured in done),
        span_seconds=max(ends) - min(starts) if done else 0.0,
        finished=datetime.fromtimestamp(max(ends), UTC) if done else None,
        machines=sorted({measured.machine for _, measured in done}),
        versions=sorted({measured.versions for _, measured in done}),
    )


def csv_record(result: RowResult) -> dict[str, str]:
    """A row's CSV record: every column, "" for the figures of a row not run."""
    row, measured = result.row, result.measured
    record = dict.fromkeys(CSV_COLUMNS, "")
    record.update(
        row=row.row,
        layers=row.layers,
        regularizer=row.regularizer,
        optimizer=row.optimizer,
        relu="yes" if row.relu else "none",
        published_train=f"{row.published_train:.2f}",
        published_test=f"{row.published_test:.2f}",
        experiment=result.experiment,
    )
    if measured is not None:
        record.update(
            measured_train=f"{measured.measured_train:.2f}",
            train_difference=f"{measured.measured_train - row.published_train:+.2f}",
            train_gain_last_epochs=f"{measured.late_gain:+.2f}" if measured.late_gain is not None else "",
            epoch_reaching_published_train=str(measured.reached_at or "never"),
            measured_test=f"{measured.measured_test:.2f}",
            test_difference=f"{measured.measured_test - row.published_test:+.2f}",
            wall_seconds=f"{measured.seconds:.0f}",
            mlflow_run_id=measured.mlflow_run_id,
            weights_sha256=measured.weights_sha256,
        )
    return record


def csv_text(records: list[dict[str, str]]) -> str:
    stream = io.StringIO(newline="")
    writer = csv.DictWriter(stream, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(records)
    return stream.getvalue()


def summary_lines(facts: Summary) -> list[str]:
    mean = facts.mean_absolute_test_difference
    gaps = [
        f"{optimizer} {gap:.2f} ({count} row{'s' if count > 1 else ''})"
        for optimizer, (gap, count) in facts.by_optimizer.items()
    ]
    return [
        f"- Rows measured: {facts.measured} of {facts.rows}",
        "- Mean absolute difference in test accuracy from the publication: "
        + (f"{mean:.2f} percentage points" if mean is not None else "n/a")
        + (f"; by optimizer: {', '.join(gaps)}" if gaps else ""),
        f"- Last row finished: {facts.finished:%Y-%m-%d %H:%M} UTC" if facts.finished else "- Not run yet",
        f"- Machine: {'; '.join(facts.machines) or 'n/a'}",
        f"- Software: {'; '.join(facts.versions) or 'n/a'}",
        f"- Total time: {facts.total_seconds / 60:.1f} min of training and evaluation "
        f"(sum of the rows' MLflow run durations); first row start to last row end: "
        f"{facts.span_seconds / 60:.1f} min",
    ]


def table_lines(records: list[dict[str, str]]) -> list[str]:
    lines = [TABLE_HEADER, TABLE_ALIGNMENT]
    for record in records:
        missing = "not run" if not record["measured_test"] else "n/a"
        cells = [record[column] or missing for column in TABLE_COLUMNS]
        lines.append("| " + " | ".join(cells) + f" | `{record['experiment']}` |")
    return lines


def markdown(results: list[RowResult], facts: Summary, *, study: Study, study_name: str, commit: str) -> str:
    lines = [
        f"# {study.title}",
        "",
        f"Written by `mlp study {study_name}` from the DVC experiments of commit `{commit[:12]}`",
        f"and their MLflow runs. Every row adds its own overrides to `{' '.join(study.overrides)}`.",
        "",
        *summary_lines(facts),
        "",
        *table_lines([csv_record(result) for result in results]),
    ]
    notes = [f"- Row {result.row.row}: {result.row.note}" for result in results if result.row.note]
    if notes:
        lines += ["", *notes]
    lines += ["", "![Measured against published test accuracy](test_accuracy.png)", ""]
    if study.discussion:
        lines += ["## Discussion", "", study.discussion.strip(), ""]
    return "\n".join(lines)


def plot(results: list[RowResult], *, title: str, path: Path) -> None:
    """Measured against published test accuracy, one colour per optimizer."""
    done = measured_rows(results)
    figure, axis = plt.subplots(figsize=(6.5, 6))
    if done:
        values = [(row.published_test, measured.measured_test) for row, measured in done]
        low, high = min(min(pair) for pair in values) - 0.5, max(max(pair) for pair in values) + 0.5
        axis.plot([low, high], [low, high], color="grey", linestyle="--", label="measured = published")
        for optimizer in dict.fromkeys(row.optimizer for row, _ in done):
            points = [point for (row, _), point in zip(done, values, strict=True) if row.optimizer == optimizer]
            axis.scatter(*zip(*points, strict=True), zorder=3, label=optimizer)
        for (row, _), point in zip(done, values, strict=True):
            axis.annotate(row.row, point, textcoords="offset points", xytext=(4, 4), fontsize=8)
        axis.set_xlim(low, high)
        axis.set_ylim(low, high)
        axis.legend(loc="upper left")
    axis.set_xlabel("published test accuracy (%)")
    axis.set_ylabel("measured test accuracy (%)")
    axis.set_title(title, fontsize=10)
    axis.grid(alpha=0.3)
    save_figure(figure, path)


def write_report(results: list[RowResult], *, study: Study, study_name: str, commit: str, directory: Path) -> Summary:
    """Write table.csv, README.md and test_accuracy.png into `directory`; return the summary."""
    facts = summary(results)
    write_text(directory / "table.csv", csv_text([csv_record(result) for result in results]))
    write_text(directory / "README.md", markdown(results, facts, study=study, study_name=study_name, commit=commit))
    plot(results, title=study.title, path=directory / "test_accuracy.png")
    return facts
