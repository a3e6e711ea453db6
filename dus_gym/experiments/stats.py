"""The statistics every comparison reports: mean and spread, Student-t intervals, paired differences, late fusion.

Over many runs (seeds) and tasks (or held-out instances of a family), :func:`aggregate_scores` gives
the aggregates RL readers expect (Agarwal et al., *Deep RL at the Edge of the Statistical Precipice*,
NeurIPS 2021; the definitions of their library rliable): the interquartile mean with
stratified-bootstrap intervals and the probability of improvement over a reference. They are
computed here with numpy, vectorised over the resamples, and tested against rliable
(tests/experiments/test_stats.py): rliable's bootstrap (through arch, pinned below 8) takes about a second
per sampler and its import two more, which every ``compare`` would pay, and arch 7 does not import
beside pandas 3.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from dus_gym.experiments.results import table_header, table_row


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


def paired_difference(seeds: Sequence[int], values: Sequence[float], ref_seeds: Sequence[int],
                      ref_values: Sequence[float]) -> tuple[float, float, float] | None:
    """Mean paired difference ``values - ref_values`` over the seeds both have, with its 95 % t interval.

    None when the two have no seed in common (every run of one of them diverged).
    """
    common = [seed for seed in seeds if seed in ref_seeds]
    if not common:
        return None
    return paired_interval([values[seeds.index(x)] for x in common], [ref_values[ref_seeds.index(x)] for x in common])


def format_mean_std(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    """``"mean ± std"`` of ``values`` times ``scale`` (percent by default)."""
    mean, std = mean_std([v * scale for v in values])
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_difference(delta: tuple[float, float, float]) -> str:
    """A difference and its interval ``(d, lo, hi)`` of accuracies as ``"+d [+lo, +hi]"`` in points.

    An interval that cannot be formed (one pair: no spread) is shown as ``"+d (one pair: no interval)"``.
    """
    d, lo, hi = delta
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{100 * d:+.1f} (one pair: no interval)"
    return f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def format_paired(values: Sequence[float], reference: Sequence[float]) -> str:
    """The paired difference ``values - reference`` of accuracies with its 95 % interval, in points."""
    return format_difference(paired_interval(values, reference))


@dataclass(frozen=True)
class Aggregate:
    """The aggregates of one sampler (or method) over runs x tasks.

    Args:
        iqm: interquartile mean of the scores, runs and tasks together (rliable's ``aggregate_iqm``:
            the mean of the middle half, ``scipy.stats.trim_mean(scores, 0.25)``).
        iqm_interval: its stratified-bootstrap percentile interval (runs resampled within each task).
        improvement: probability of improvement over the reference: per task P(X > Y) over all pairs of
            a run of this sampler and a run of the reference (ties count 1/2), averaged over tasks;
            None for the reference itself.
        improvement_interval: its stratified-bootstrap percentile interval (each sampler's runs
            resampled within each task); None for the reference.
        runs: runs per task.
        tasks: tasks (columns).
    """

    iqm: float
    iqm_interval: tuple[float, float]
    improvement: float | None = None
    improvement_interval: tuple[float, float] | None = None
    runs: int = 0
    tasks: int = 0


def _iqm(scores: np.ndarray) -> np.ndarray:
    """IQM over the last two axes: (..., runs, tasks) -> (...)."""
    flat = scores.reshape(*scores.shape[:-2], -1)
    return stats.trim_mean(flat, 0.25, axis=-1)


def _improvement(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) + P(X = Y)/2 per task, averaged over tasks: (..., n, tasks), (..., m, tasks) -> (...)."""
    diff = x[..., :, None, :] - y[..., None, :, :]
    wins = (diff > 0).mean(axis=(-3, -2)) + 0.5 * (diff == 0).mean(axis=(-3, -2))
    return wins.mean(axis=-1)


def _resample(scores: np.ndarray, reps: int, rng: np.random.Generator) -> np.ndarray:
    """Stratified bootstrap: (runs, tasks) -> (reps, runs, tasks), runs drawn with replacement within each task."""
    runs, tasks = scores.shape
    index = rng.integers(0, runs, size=(reps, runs, tasks))
    return np.take_along_axis(np.broadcast_to(scores, (reps, runs, tasks)), index, axis=1)


def aggregate_scores(scores: Mapping[str, Sequence[float] | np.ndarray], reference: str | None = "uniform",
                     reps: int = 2000, level: float = 0.95, seed: int = 0) -> dict[str, Aggregate]:
    """IQM with stratified-bootstrap intervals, and the probability of improvement over ``reference``.

    Args:
        scores: per sampler (or method), a (runs, tasks) array of scores; a 1-d array is one task
            (runs = seeds). Runs may differ between samplers; every sampler needs the same tasks, in
            the same column order.
        reference: the sampler the others are compared with (None, or absent from ``scores``: no
            probability of improvement).
        reps: bootstrap resamples.
        level: confidence level of the percentile intervals.
        seed: seed of the bootstrap (same scores and seed: same intervals).

    Raises:
        ValueError: an empty or non-finite score array, samplers with different numbers of tasks, or a
            bad ``reps``/``level``.
    """
    if reps < 1 or not 0.0 < level < 1.0:
        raise ValueError(f"reps must be >= 1 and level in (0, 1), got {reps} and {level}")
    table = {}
    for name, values in scores.items():
        a = np.asarray(values, dtype=np.float64)
        a = a.reshape(-1, 1) if a.ndim == 1 else a
        if a.ndim != 2 or a.size == 0 or not np.isfinite(a).all():
            raise ValueError(f"the scores of '{name}' must be a non-empty finite (runs, tasks) array, got shape "
                             f"{a.shape}")
        table[name] = a
    if len({a.shape[1] for a in table.values()}) > 1:
        raise ValueError(f"every sampler needs the same tasks, got {({n: a.shape[1] for n, a in table.items()})}")
    rng = np.random.default_rng(seed)
    tails = [100 * (1 - level) / 2, 100 * (1 + level) / 2]
    boots = {name: _resample(a, reps, rng) for name, a in table.items()}
    out = {}
    for name, a in table.items():
        lo, hi = np.percentile(_iqm(boots[name]), tails)
        improvement = interval = None
        if reference in table and name != reference:
            improvement = float(_improvement(a, table[reference]))
            p_lo, p_hi = np.percentile(_improvement(boots[name], boots[reference]), tails)
            interval = (float(p_lo), float(p_hi))
        out[name] = Aggregate(float(_iqm(a)), (float(lo), float(hi)), improvement, interval, a.shape[0], a.shape[1])
    return out


def format_aggregates(aggregates: Mapping[str, Aggregate], reference: str = "uniform", what: str = "fused acc",
                      label: str = "sampler", scale: float = 100.0) -> str:
    """A markdown table of :func:`aggregate_scores`: IQM [95% CI] and P(X > reference) [95% CI]."""
    lines = table_header([label, f"IQM {what} [95% CI]", f"P({label} > {reference}) [95% CI]"])
    for name, a in aggregates.items():
        lo, hi = a.iqm_interval
        poi = "—" if a.improvement is None else (f"{a.improvement:.2f} [{a.improvement_interval[0]:.2f}, "
                                                 f"{a.improvement_interval[1]:.2f}]")
        lines.append(table_row([name, f"{scale * a.iqm:.1f} [{scale * lo:.1f}, {scale * hi:.1f}]", poi]))
    return "\n".join(lines)


def clustered_difference(values: Mapping[int, Sequence[float]], reference: Mapping[int, Sequence[float]],
                         level: float = 0.95) -> tuple[float, float, float]:
    """Paired difference with the instance as the unit: per-instance means over seeds, then a t interval.

    Args:
        values: per instance, the scores of its cases (seeds; any number, at least one).
        reference: per instance, the reference's scores on the same cases.
        level: confidence level.

    Returns ``(mean, low, high)`` of the per-instance mean differences, with df = instances - 1 (nan
    bounds for a single instance). Instances missing from either side are left out.
    """
    common = [i for i in values if i in reference and len(values[i]) and len(reference[i])]
    d = [float(np.mean(values[i])) - float(np.mean(reference[i])) for i in common]
    if not d:
        return float("nan"), float("nan"), float("nan")
    return mean_interval(d, level)


def format_clustered(values: Mapping[int, Sequence[float]], reference: Mapping[int, Sequence[float]]) -> str:
    """:func:`clustered_difference` of accuracies as ``"+d [+lo, +hi]"`` in points ("—" for fewer than 2 instances)."""
    common = [i for i in values if i in reference]
    if len(common) < 2:
        return "—"
    return format_difference(clustered_difference(values, reference))


def _trimmed_rows(a: np.ndarray) -> np.ndarray:
    """IQM over the last axis."""
    return stats.trim_mean(a, 0.25, axis=-1)


def two_level_aggregates(scores: Mapping[str, np.ndarray], reference: str | None = "uniform", reps: int = 2000,
                         level: float = 0.95, seed: int = 0) -> dict[str, Aggregate]:
    """IQM over instances of per-instance mean scores, and the probability of improvement, by two-level bootstrap.

    Instances are resampled, then seeds within each resampled instance. The instance is the unit: unlike
    :func:`aggregate_scores` (which holds the tasks fixed), the interval includes the variation between the
    instances of a family.

    Args:
        scores: per row, a (seeds, instances) array of scores (e.g. normalised per instance: 0 = uniform,
            1 = oracle); every row has the same instances in the same column order.
        reference: the row the probability of improvement compares with (None: none).
        reps: bootstrap resamples.
        level: confidence level of the percentile intervals.
        seed: seed of the bootstrap.
    """
    table = {name: np.asarray(a, dtype=np.float64) for name, a in scores.items()}
    shapes = {a.shape[1] for a in table.values() if a.ndim == 2}
    if len(shapes) != 1 or any(a.ndim != 2 or a.size == 0 or not np.isfinite(a).all() for a in table.values()):
        raise ValueError("two_level_aggregates needs finite (seeds, instances) arrays with the same instances")
    rng = np.random.default_rng(seed)
    n = shapes.pop()
    instances = rng.integers(0, n, size=(reps, n))
    tails = [100 * (1 - level) / 2, 100 * (1 + level) / 2]
    boots = {}
    for name, a in table.items():
        runs = a.shape[0]
        picks = rng.integers(0, runs, size=(reps, n, runs))
        columns = a.T[instances]  # (reps, n, runs): the resampled instances' seeds
        boots[name] = np.take_along_axis(columns, picks, axis=2)
    out = {}
    for name, a in table.items():
        iqm = float(_trimmed_rows(a.mean(0)))
        lo, hi = np.percentile(_trimmed_rows(boots[name].mean(2)), tails)
        improvement = interval = None
        if reference in table and name != reference:
            improvement = float(_improvement(a, table[reference]))
            x, y = boots[name].transpose(0, 2, 1), boots[reference].transpose(0, 2, 1)  # (reps, runs, n)
            p_lo, p_hi = np.percentile(_improvement(x, y), tails)
            interval = (float(p_lo), float(p_hi))
        out[name] = Aggregate(iqm, (float(lo), float(hi)), improvement, interval, a.shape[0], n)
    return out
