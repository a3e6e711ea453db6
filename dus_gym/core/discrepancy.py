"""The Cumulative Modality Discrepancy (CMD) monitor and the observation built from it (docs/method.md).

- learning status s_t(m): mean over m's samples of the probability its unimodal head gives the
  true class;
- cumulative status c_t(m) = ((t-1)/t) c_{t-1}(m) + (1/t) s_t(m) (running mean), or, with a
  window w, an exponential mean c_t = (1 - 1/w) c_{t-1} + (1/w) s_t once t >= w (a running mean
  before, so the start is not biased to zero);
- discrepancy d_t(m) = c_t(m) - mean_k c_t(k).

Pure tensor code: no model, no optimiser.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def learning_status(probabilities: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean softmax probability of the true class, s(m), from (batch, classes) probabilities.

    (The learners compute it from logits with :func:`dus_gym.core.objectives.head_terms`.)
    """
    if len(labels) == 0:
        raise ValueError("learning status needs at least one sample")
    return float(probabilities.gather(1, labels.view(-1, 1)).mean())


class CMDMonitor:
    """Tracks the cumulative status and discrepancy of M modalities.

    Args:
        n_modalities: M.
        window: None for the running mean (default), or w >= 1 for the exponential variant.
    """

    def __init__(self, n_modalities: int, window: int | None = None) -> None:
        if n_modalities < 2:
            raise ValueError(f"CMD needs at least 2 modalities, got {n_modalities}")
        if window is not None and window < 1:
            raise ValueError(f"CMD window must be >= 1 or None, got {window}")
        self.n_modalities = n_modalities
        self.window = window
        self.reset()

    def reset(self) -> None:
        """Forget every update (t = 0, all statuses zero)."""
        self.t = 0
        self.cumulative = np.zeros(self.n_modalities)
        self.status = np.zeros(self.n_modalities)

    def update(self, status: np.ndarray | list[float]) -> np.ndarray:
        """Fold in one iteration's learning status s_t (length M); return the discrepancy d_t."""
        status = np.asarray(status, dtype=np.float64)
        if status.shape != (self.n_modalities,):
            raise ValueError(f"status must have shape ({self.n_modalities},), got {status.shape}")
        if not np.isfinite(status).all():
            raise ValueError(f"learning status must be finite, got {status.tolist()}")
        self.t += 1
        rate = 1.0 / self.t if self.window is None else 1.0 / min(self.t, self.window)
        self.cumulative = (1.0 - rate) * self.cumulative + rate * status
        self.status = status
        return self.discrepancy

    @property
    def discrepancy(self) -> np.ndarray:
        """d_t(m) = c_t(m) - mean_k c_t(k); sums to zero (two modalities: d(a) = (c_a - c_b) / 2 = -d(b))."""
        return self.cumulative - self.cumulative.mean()

    @property
    def gap(self) -> float:
        """|CMD| as reported: the spread max_m c_t(m) - min_m c_t(m) (= |c(a) - c(b)| for two)."""
        return float(self.cumulative.max() - self.cumulative.min())

    def state_dict(self) -> dict[str, Any]:
        """The monitor's state, to save with a checkpoint."""
        return {"t": self.t, "cumulative": self.cumulative.tolist(), "status": self.status.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state saved by :meth:`state_dict`."""
        self.t = int(state["t"])
        self.cumulative = np.asarray(state["cumulative"], dtype=np.float64)
        self.status = np.asarray(state["status"], dtype=np.float64)

