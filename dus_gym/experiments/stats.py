"""The statistics every comparison reports: mean and spread, Student-t intervals, paired differences, late fusion."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def mean_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and its Student-t confidence interval (nan bounds for a single value)."""
    a = np.asarray(values, dtype=np.float64)
    mean = float(a.mean())
    if len(a) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a)))
    return mean, mean - half, mean + half


def paired_interval(values: Sequence[float], reference: Sequence[float], level: float = 0.95
                    ) -> tuple[float, float, float]:
    """Mean paired difference ``values - reference`` and its Student-t confidence interval (nan bounds for one pair)."""
    d = np.asarray(values, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    return mean_interval(d.tolist(), level)


def late_fusion_accuracy(probabilities: Sequence[np.ndarray], labels: np.ndarray) -> float:
    """Accuracy of the late fusion of separately trained unimodal models: the sum of their log-probabilities.

    Args:
        probabilities: per modality, (n, classes) softmax of the model trained on that modality alone.
        labels: (n,) true classes.
    """
    log_p = sum(np.log(p + 1e-12) for p in probabilities)
    return float((log_p.argmax(1) == labels).mean())


def format_mean_std(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    """``"mean ± std"`` of ``values`` times ``scale`` (percent by default)."""
    mean, std = mean_std([v * scale for v in values])
    return f"{mean:.{digits}f} ± {std:.{digits}f}"
