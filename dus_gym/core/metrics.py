"""Classification metrics, Shapley values of modalities and their balance degree, the linear probe of an encoder."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from itertools import combinations

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


def shapley_values(value: Callable[[frozenset[str]], float], players: Sequence[str]) -> dict[str, float]:
    """Exact Shapley value of every player for the set function ``value`` (called once per subset).

    phi(m) = sum over subsets S of the others of |S|! (M - |S| - 1)! / M! * (value(S + m) - value(S)).
    The values sum to value(all) - value(none). With ``value`` the fused accuracy when the
    modalities outside S are zeroed, this is the per-modality contribution BalanceBenchmark reports.
    """
    M = len(players)
    cache: dict[frozenset[str], float] = {}

    def v(subset: frozenset[str]) -> float:
        if subset not in cache:
            cache[subset] = float(value(subset))
        return cache[subset]

    phi = {}
    for m in players:
        others = [p for p in players if p != m]
        total = 0.0
        for size in range(M):
            weight = math.factorial(size) * math.factorial(M - size - 1) / math.factorial(M)
            for subset in combinations(others, size):
                s = frozenset(subset)
                total += weight * (v(s | {m}) - v(s))
        phi[m] = total
    return phi


def balance_degree(shapley: Mapping[str, float]) -> float | None:
    """How evenly the modalities share the fused accuracy: 1 - imbalance degree of their Shapley values.

    imbalance = sum over pairs i < j of |phi(i) - phi(j)| / ((M - 1) * sum_i phi(i)), the pairwise
    spread of the Shapley values (BalanceBenchmark's per-modality contributions, see
    :func:`shapley_values`) relative to their total; balance = 1 - imbalance. With every phi >= 0 the
    balance lies in [0, 1]: 1 when the modalities contribute equally, 0 when one carries the whole
    contribution; a negative phi (a modality that lowers the accuracy) takes it below 0. BalanceBenchmark
    reports an imbalance degree from these Shapley values without a formula in its code; this
    normalised spread is our reading (see docs/bench.md). None when it is undefined: fewer than two
    modalities, or a total contribution <= 0 (the fused model no better than with every input zeroed).
    """
    phi = [float(v) for v in shapley.values()]
    total = sum(phi)
    if len(phi) < 2 or not total > 0.0:
        return None
    spread = sum(abs(a - b) for a, b in combinations(phi, 2))
    return 1.0 - spread / ((len(phi) - 1) * total)
