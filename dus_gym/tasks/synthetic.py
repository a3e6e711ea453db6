"""A generated task with a known, controllable and harmful modality imbalance.

Classes are ``n_coarse`` groups of ``n_fine`` classes each. Two kinds of modality:

- the *dominant* modality ("dominant"): high-dimensional; the coarse group is linearly separable
  in it, the fine class is absent, and its per-sample noise makes the training set easy to
  memorise. A model that leans on it fits the training labels fast and generalises only to the
  coarse group.
- the *weak* modality ("weak", and "weak2", ... when ``n_weak > 1``): low-dimensional, carries the
  full class (coarse and fine) but non-linearly: each class is a symmetric mixture of two
  Gaussians at +mu_c and -mu_c, so any linear read-out is at chance.

Joint training lets the dominant modality fit the training set by memorisation before the fusion
head learns to use the weak one; the late fusion of two separately trained unimodal models does
not suffer from it. The gap between the two measures the harmful imbalance.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from dus_gym.core.task import MLPEncoder, MultimodalSplit, Task
from dus_gym.tasks.mfeat import stratified_splits


def make_synthetic(
    n_samples: int = 2000,
    n_coarse: int = 5,
    n_fine: int = 2,
    dominant_dim: int = 1024,
    coarse_signal: float = 8.0,
    dominant_noise: float = 1.0,
    weak_dim: int = 16,
    weak_signal: float = 2.0,
    weak_noise: float = 0.7,
    n_weak: int = 1,
    dominant_slot: int = 0,
    dominant_fine_signal: float = 0.0,
    hidden_dim: int = 128,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    data_seed: int = 0,
) -> Task:
    """Generate the synthetic task (same data for the same arguments).

    Args:
        n_samples: total number of samples before the train/val/test split.
        n_coarse: number of coarse groups (what the dominant modality tells).
        n_fine: classes per coarse group (what only the weak modality tells).
        dominant_dim: dimension of the dominant modality.
        coarse_signal: norm of the coarse-group mean in the dominant modality.
        dominant_noise: standard deviation of the dominant modality's isotropic noise.
        weak_dim: dimension of each weak modality.
        weak_signal: norm of each class's mixture mean mu_c in a weak modality.
        weak_noise: standard deviation of a weak modality's isotropic noise.
        n_weak: number of weak modalities (M = 1 + n_weak).
        dominant_slot: the position of the dominant modality in the modality order (0 to n_weak).
        dominant_fine_signal: norm of a per-class mean added to the dominant modality (0: it tells only the
            coarse group). Large enough, the dominant modality alone separates every class and the imbalance
            is harmless: leaning on it is right.
        hidden_dim: encoder width.
        val_fraction: share of samples held out for validation.
        test_fraction: share of samples held out for testing.
        data_seed: seed of the generator and of the split.
    """
    if min(n_samples, n_coarse, n_fine, dominant_dim, weak_dim, n_weak) < 1 or n_coarse * n_fine < 2:
        raise ValueError("synthetic task sizes (n_samples, n_coarse, n_fine, dims, n_weak) must be positive, "
                         "with at least 2 classes")
    if min(coarse_signal, weak_signal, dominant_fine_signal) < 0 or min(dominant_noise, weak_noise) <= 0:
        raise ValueError("synthetic task signals must be >= 0 and noises > 0")
    if not 0 <= dominant_slot <= n_weak:
        raise ValueError(f"dominant_slot must be in [0, n_weak] = [0, {n_weak}], got {dominant_slot}")
    rng = np.random.default_rng(data_seed)
    n_classes = n_coarse * n_fine
    labels = np.arange(n_samples) % n_classes
    rng.shuffle(labels)
    coarse = labels // n_fine

    coarse_means = _unit_rows(rng.standard_normal((n_coarse, dominant_dim))) * coarse_signal
    dominant = coarse_means[coarse] + dominant_noise * rng.standard_normal((n_samples, dominant_dim))
    features = {"dominant": dominant}
    names = ["dominant"]
    for k in range(n_weak):
        name = "weak" if k == 0 else f"weak{k + 1}"
        class_means = _unit_rows(rng.standard_normal((n_classes, weak_dim))) * weak_signal
        sign = rng.choice([-1.0, 1.0], size=(n_samples, 1))
        features[name] = sign * class_means[labels] + weak_noise * rng.standard_normal((n_samples, weak_dim))
        names.append(name)
    if dominant_fine_signal > 0:  # drawn last: the default data stream is unchanged
        fine_means = _unit_rows(rng.standard_normal((n_classes, dominant_dim))) * dominant_fine_signal
        features["dominant"] = features["dominant"] + fine_means[labels]
    names.insert(dominant_slot, names.pop(0))

    index = stratified_splits(labels, val_fraction, test_fraction, data_seed)
    splits = {
        split: MultimodalSplit(
            {m: torch.tensor(x[idx], dtype=torch.float32) for m, x in features.items()},
            torch.from_numpy(labels[idx].astype(np.int64)),
        )
        for split, idx in index.items()
    }
    encoders = {m: partial(MLPEncoder, features[m].shape[1], hidden_dim) for m in names}
    return Task(
        name="synthetic",
        modalities=tuple(names),
        n_classes=n_classes,
        splits=splits,
        encoders=encoders,
        metadata={"n_coarse": n_coarse, "n_fine": n_fine, "data_seed": data_seed, "dominant_slot": dominant_slot},
    )


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)
