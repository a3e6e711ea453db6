"""Classification metrics (accuracy, macro-F1, mAP) and the linear probe of an encoder's features."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def classification_metrics(probabilities: np.ndarray, labels: np.ndarray, n_classes: int) -> dict[str, float]:
    """Accuracy, macro-F1 and mean average precision (one-vs-rest, macro over classes present)."""
    predictions = probabilities.argmax(1)
    onehot = np.eye(n_classes)[labels]
    present = onehot.sum(0) > 0
    return {
        "acc": float((predictions == labels).mean()),
        "f1": float(f1_score(labels, predictions, average="macro", labels=np.arange(n_classes), zero_division=0)),
        "map": float(average_precision_score(onehot[:, present], probabilities[:, present], average="macro")),
    }


def linear_probe_accuracy(
    train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray, test_labels: np.ndarray
) -> float:
    """Accuracy of a logistic regression fitted on frozen features: how much an encoder learned."""
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(train_features, train_labels)
    return float((probe.predict(test_features) == test_labels).mean())
