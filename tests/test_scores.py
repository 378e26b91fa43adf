"""pipeline.scores gives what scikit-learn gives: the confusion matrix, per-class and macro scores, and the
classification report's text, character for character, also for classes never predicted or never present."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import classification_report
from sklearn.metrics import confusion_matrix as sklearn_confusion_matrix

from pipeline.scores import confusion_matrix, per_class_scores, report_text


def labelled(case: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    generator = np.random.default_rng(len(case))
    labels = generator.integers(0, num_classes, 300)
    predictions = np.where(generator.random(300) < 0.7, labels, generator.integers(0, num_classes, 300))
    if case == "a class never predicted":
        predictions[predictions == 1] = 2
    elif case == "a class never present":
        labels[labels == 1] = 2
    elif case == "one class predicted":
        predictions[:] = 0
    return labels, predictions


@pytest.mark.parametrize("case", ["random", "a class never predicted", "a class never present", "one class predicted"])
@pytest.mark.parametrize(
    "class_names", [[str(digit) for digit in range(10)], ["cat", "dog", "a rather long class name"]]
)
def test_scores_are_scikit_learns(case, class_names):
    labels, predictions = labelled(case, len(class_names))
    everything = list(range(len(class_names)))
    options = {"labels": everything, "target_names": class_names, "zero_division": 0}
    expected = classification_report(labels, predictions, output_dict=True, **options)

    matrix = confusion_matrix(labels, predictions, len(class_names))
    np.testing.assert_array_equal(matrix, sklearn_confusion_matrix(labels, predictions, labels=everything))
    scores = per_class_scores(matrix)
    for index, name in enumerate(class_names):
        assert scores["precision"][index] == pytest.approx(expected[name]["precision"])
        assert scores["recall"][index] == pytest.approx(expected[name]["recall"])
        assert scores["f1"][index] == pytest.approx(expected[name]["f1-score"])
        assert scores["support"][index] == expected[name]["support"]
    assert scores["f1"].mean() == pytest.approx(expected["macro avg"]["f1-score"])
    assert report_text(matrix, class_names) == classification_report(labels, predictions, digits=4, **options)
