"""A study's report in reports/studies/<name>/: the measured accuracies beside the published ones, as
table.csv, as README.md (with a summary, the rows' notes and the discussion) and as test_accuracy.png."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from statistics import mean

import matplotlib.pyplot as plt
import pandas as pd

from pipeline.figures import save_figure
from pipeline.files import write_text
from pipeline.study.schema import LATE_EPOCHS, Measured, Study, StudyRow, experiment_name

# CSV column -> its header in the Markdown table, which leaves out the run identifiers.
COLUMNS = {
    "row": "row",
    "layers": "layers",
    "regularizer": "regularizer",
    "optimizer": "optimizer",
    "relu": "ReLU",
    "published_train": "train % published",
    "measured_train": "train % measured",
    "train_difference": "difference",
    "train_gain_last_epochs": f"train % gained in the last {LATE_EPOCHS} epochs",
    "epoch_reaching_published_train": "epoch reaching the published train %",
    "published_test": "test % published",
    "measured_test": "test % measured",
    "test_difference": "difference",
    "wall_seconds": "wall time (s)",
    "experiment": "DVC experiment",
    "mlflow_run_id": None,
    "weights_sha256": None,
}
CSV_COLUMNS = tuple(COLUMNS)
TABLE_COLUMNS = CSV_COLUMNS[: CSV_COLUMNS.index("experiment")]  # then the experiment, as code
TABLE_HEADER = "| " + " | ".join(header for header in COLUMNS.values() if header) + " |"
# The five describing the row to the left, the figures to the right.
TABLE_ALIGNMENT = "|" + "---|" * 5 + "---:|" * (len(TABLE_COLUMNS) - 5) + "---|"


def csv_record(row: StudyRow, measured: Measured | None, study_name: str) -> dict[str, str]:
    """A row's CSV record: every column, "" for the figures of a row not run."""
    record = dict.fromkeys(CSV_COLUMNS, "") | row.model_dump(include={"row", "layers", "regularizer", "optimizer"})
    record.update(
        relu="yes" if row.relu else "none",
        published_train=f"{row.published_train:.2f}",
        published_test=f"{row.published_test:.2f}",
        experiment=experiment_name(study_name, row),
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


def summary_lines(done: list[tuple[StudyRow, Measured]], rows: int) -> list[str]:
    gaps: dict[str, list[float]] = {}  # optimizer -> absolute test differences, in percentage points
    for row, measured in done:
        gaps.setdefault(row.optimizer, []).append(abs(measured.measured_test - row.published_test))
    by_optimizer = ", ".join(
        f"{optimizer} {mean(values):.2f} ({len(values)} row{'s' if len(values) > 1 else ''})"
        for optimizer, values in gaps.items()
    )
    overall = mean(gap for values in gaps.values() for gap in values) if done else None
    starts, ends = [measured.start for _, measured in done], [measured.end for _, measured in done]
    return [
        f"- Rows measured: {len(done)} of {rows}",
        "- Mean absolute difference in test accuracy from the publication: "
        + (f"{overall:.2f} percentage points; by optimizer: {by_optimizer}" if done else "n/a"),
        f"- Last row finished: {datetime.fromtimestamp(max(ends), UTC):%Y-%m-%d %H:%M} UTC"
        if done
        else "- Not run yet",
        f"- Machine: {'; '.join(sorted({measured.machine for _, measured in done})) or 'n/a'}",
        f"- Software: {'; '.join(sorted({measured.versions for _, measured in done})) or 'n/a'}",
        f"- Total time: {sum(measured.seconds for _, measured in done) / 60:.1f} min of training and evaluation "
        f"(sum of the rows' MLflow run durations); first row start to last row end: "
        f"{(max(ends) - min(starts) if done else 0.0) / 60:.1f} min",
    ]


def table_lines(records: list[dict[str, str]]) -> list[str]:
    lines = [TABLE_HEADER, TABLE_ALIGNMENT]
    for record in records:
        missing = "not run" if not record["measured_test"] else "n/a"
        cells = [record[column] or missing for column in TABLE_COLUMNS]
        lines.append("| " + " | ".join(cells) + f" | `{record['experiment']}` |")
    return lines


def plot(done: list[tuple[StudyRow, Measured]], *, title: str, path: Path) -> None:
    """Measured against published test accuracy, one colour per optimizer."""
    figure, axis = plt.subplots(figsize=(6.5, 6))
    if done:
        values = [(row.published_test, measured.measured_test) for row, measured in done]
        low, high = min(map(min, values)) - 0.5, max(map(max, values)) + 0.5
        axis.plot([low, high], [low, high], color="grey", linestyle="--", label="measured = published")
        for optimizer in dict.fromkeys(row.optimizer for row, _ in done):
            points = [point for (row, _), point in zip(done, values, strict=True) if row.optimizer == optimizer]
            axis.scatter(*zip(*points, strict=True), zorder=3, label=optimizer)
        for (row, _), point in zip(done, values, strict=True):
            axis.annotate(row.row, point, textcoords="offset points", xytext=(4, 4), fontsize=8)
        axis.set(xlim=(low, high), ylim=(low, high))
        axis.legend(loc="upper left")
    axis.set(xlabel="published test accuracy (%)", ylabel="measured test accuracy (%)")
    axis.set_title(title, fontsize=10)
    axis.grid(alpha=0.3)
    save_figure(figure, path)


def write_report(
    results: list[tuple[StudyRow, Measured | None]], *, study: Study, study_name: str, commit: str, directory: Path
) -> None:
    """Write table.csv, README.md and test_accuracy.png into `directory`: each row's figures, None if not run."""
    records = [csv_record(row, measured, study_name) for row, measured in results]
    write_text(directory / "table.csv", pd.DataFrame(records, columns=CSV_COLUMNS).to_csv(index=False))
    done = [(row, measured) for row, measured in results if measured is not None]
    notes = [f"- Row {row.row}: {row.note}" for row, _ in results if row.note]
    lines = [
        f"# {study.title}",
        "",
        f"Written by `mlp study {study_name}` from the DVC experiments of commit `{commit[:12]}`",
        f"and their MLflow runs. Every row adds its own overrides to `{' '.join(study.overrides)}`.",
        "",
        *summary_lines(done, len(results)),
        "",
        *table_lines(records),
        *(["", *notes] if notes else []),
        "",
        "![Measured against published test accuracy](test_accuracy.png)",
        "",
    ]
    if study.discussion:
        lines += ["## Discussion", "", study.discussion.strip(), ""]
    write_text(directory / "README.md", "\n".join(lines))
    plot(done, title=study.title, path=directory / "test_accuracy.png")
