"""Classification scores from true and predicted classes: the confusion matrix, per-class precision,
recall and F1, their macro averages, and the text report.

The definitions are scikit-learn's (`confusion_matrix`, `classification_report`
with zero_division=0; tests/test_scores.py compares the two on random and
degenerate labels). They are computed here from the confusion matrix because
importing sklearn.metrics costs the evaluate stage about half a second per run
for what is a few divisions.
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[actual, predicted], every class a row and a column even if it never occurs."""
    flat = np.asarray(labels, dtype=np.int64) * num_classes + np.asarray(predictions, dtype=np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_scores(matrix: np.ndarray) -> dict[str, np.ndarray]:
    """precision, recall, f1 and support per class; 0 where a score divides by zero."""
    correct = np.diag(matrix).astype(np.float64)
    predicted, support = matrix.sum(axis=0), matrix.sum(axis=1)
    precision = np.divide(correct, predicted, out=np.zeros_like(correct), where=predicted > 0)
    recall = np.divide(correct, support, out=np.zeros_like(correct), where=support > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(correct), where=total > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def report_text(matrix: np.ndarray, class_names: list[str], digits: int = 4) -> str:
    """The table scikit-learn's classification_report prints, character for character: a row per class,
    then accuracy, macro and weighted averages."""
    scores = per_class_scores(matrix)
    support = scores["support"]
    total = int(support.sum())
    weights = support / total if total else np.zeros(len(support))
    width = max(*(len(name) for name in class_names), len("weighted avg"), digits)

    def row(name: str, values: list[float], count: int) -> str:
        return f"{name:>{width}} " + "".join(f" {value:>9.{digits}f}" for value in values) + f" {count:>9}\n"

    text = f"{'':>{width}} " + "".join(f" {header:>9}" for header in ("precision", "recall", "f1-score", "support"))
    text += "\n\n"
    for index, name in enumerate(class_names):
        text += row(name, [float(scores[key][index]) for key in ("precision", "recall", "f1")], int(support[index]))
    accuracy = float(np.trace(matrix) / total) if total else 0.0
    text += "\n" + f"{'accuracy':>{width}} " + " " * 20 + f" {accuracy:>9.{digits}f} {total:>9}\n"
    text += row("macro avg", [float(scores[key].mean()) for key in ("precision", "recall", "f1")], total)
    return text + row("weighted avg", [float(scores[key] @ weights) for key in ("precision", "recall", "f1")], total)
