"""Training episodes: the per-iteration and per-step logic shared by ``dus-gym run``, ``DUSEnv`` and ``VecDUSEnv``.

An episode is one training run of a learner. :class:`Episodes` runs N of them on one learner
backend (:class:`dus_gym.core.backend.LearnerBackend`; N = 1 for ``DUSEnv`` and ``dus-gym run``)
and is the one owner of what happens around each learner iteration and each env step:

- after an iteration, the learning status of every episode whose loss is finite is folded into
  its CMD monitor: the status on the held-out probe slice when the CMD source is the probe, else
  on the training batch, where a modality that drew no sample keeps its last status;
- the observation (:class:`dus_gym.core.observation.ObservationLayout`, clipped to its bounds);
- an env step (K iterations with the chosen counts, fewer at the end of the episode), the
  validation score, the reward and the info; a NaN/inf loss truncates that episode with
  ``-divergence_penalty``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from dus_gym.core.backend import BatchedIterationStats, LearnerBackend
from dus_gym.core.config import EnvConfig
from dus_gym.core.discrepancy import CMDMonitor
from dus_gym.core.observation import ObservationLayout

logger = logging.getLogger(__name__)


class Episodes:
    """N training episodes on one learner backend (see the module docstring).

    Args:
        learners: the backend whose learner i runs episode i.
        modalities: modality names, in count order.
        batch_size: the base batch size B.
        n_iterations: T, the budget of an episode in learner iterations.
        cmd_window: the CMD monitor's window (None: running mean).
        layout: the observation vector.
        env: step size K, reward weights and divergence penalty.
    """

    def __init__(self, learners: LearnerBackend, modalities: tuple[str, ...], batch_size: int, n_iterations: int,
                 cmd_window: int | None, layout: ObservationLayout, env: EnvConfig) -> None:
        N, M = learners.n_learners, len(modalities)
        self.learners = learners
        self.modalities = modalities
        self.batch_size = batch_size
        self.n_iterations = n_iterations
        self.layout = layout
        self.env = env
        self.monitors = [CMDMonitor(M, window=cmd_window) for _ in range(N)]
        self.counts = np.full((N, M), batch_size, dtype=np.int64)
        """The counts of each episode's last iteration (B before the first)."""
        self.last_status = np.zeros((N, M))
        self.count_sum = np.zeros((N, M))
        self.count_iterations = np.zeros(N, dtype=np.int64)
        self.start_iteration = np.zeros(N, dtype=np.int64)
        self.score = np.zeros(N)
        """Each episode's last fused validation accuracy."""
        self.per_modality = np.zeros((N, M))
        self.val_status = np.zeros((N, M))
        """Each head's validation status (mean true-class probability) at the last evaluation."""
        self.started = np.zeros(N, dtype=bool)

    @property
    def n_episodes(self) -> int:
        """N."""
        return len(self.monitors)

    def start(self, i: int, seed: int, checkpoint: str | None = None) -> None:
        """Start episode ``i``: its learner from ``seed`` (or from a learner checkpoint), CMD zero, counts B."""
        self.learners.reset_learner(i, seed, checkpoint=checkpoint)
        self.start_iteration[i] = self.learners.iteration[i]
        self.monitors[i].reset()
        self.counts[i] = self.batch_size
        self.last_status[i] = 0.0
        self.count_sum[i] = 0.0
        self.count_iterations[i] = 0
        self.started[i] = True

    def evaluate(self, indices: np.ndarray | list[int]) -> None:
        """Score the learners of ``indices`` on the validation split (every learner in one pass)."""
        fused, per_modality, status = self.learners.scores("val")
        for i in indices:
            self.score[i] = fused[i]
            self.per_modality[i] = per_modality[i]
            self.val_status[i] = status[i]

    def iterate(self, counts: np.ndarray, active: np.ndarray | None = None) -> BatchedIterationStats:
        """One learner iteration of the ``active`` episodes; a finite one's learning status updates its CMD."""
        active = np.ones(self.n_episodes, dtype=bool) if active is None else active
        progress = (self.learners.iteration - self.start_iteration) / self.n_iterations
        stats = self.learners.step(counts, active, progress)
        self.counts = np.where(active[:, None], stats.counts, self.counts)  # as used (after quantisation)
        finite = active & np.isfinite(stats.loss)
        if finite.any():
            probe = self.learners.probe_status() if self.learners.probe_size else None
            for i in np.flatnonzero(finite):
                status = probe[i] if probe is not None else np.where(
                    np.isnan(stats.status[i]), self.last_status[i], stats.status[i])
                self.last_status[i] = status
                self.monitors[i].update(status)
        return stats

    def observation(self, i: int) -> np.ndarray:
        """Episode ``i``'s observation: its CMD state, last counts and progress, clipped to the bounds."""
        return self.layout.build(self.monitors[i], self.counts[i], self.progress(i), self.val_status[i],
                                 float(self.score[i]))

    def progress(self, i: int) -> float:
        """The progress t / T of episode ``i`` (at most 1)."""
        return min((self.learners.iteration[i] - self.start_iteration[i]) / self.n_iterations, 1.0)

    def step(self, counts: np.ndarray | Callable[[np.ndarray], np.ndarray], active: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        """One env step of the ``active`` episodes (default all): K iterations with its counts, its reward, its info.

        ``counts`` is (N, M), the same at every iteration of the step, or a rule that gives them before
        each iteration from the episodes' discrepancies d_t, (N, M) -> (N, M) (the strength action: the
        policy chose how strongly to react, the rule reacts at every iteration). An inactive episode (one a
        Gymnasium next-step auto-reset is resetting instead) runs nothing and gets reward 0, no termination
        and an empty info. Returns (observations, rewards, terminated,
        truncated, infos), one row per episode.
        """
        N, K = self.n_episodes, self.env.iterations_per_step
        active = np.ones(N, dtype=bool) if active is None else np.asarray(active, dtype=bool)
        if not self.started[active].all():
            raise RuntimeError("call reset() before step()")
        remaining = self.start_iteration + self.n_iterations - self.learners.iteration
        if (remaining[active] <= 0).any():
            raise RuntimeError("the episode has ended; call reset()")
        n_run = np.where(active, np.minimum(K, remaining), 0)
        diverged = np.zeros(N, dtype=bool)
        infos: list[dict[str, Any]] = [{} for _ in range(N)]
        for it in range(int(n_run.max())):
            active = (it < n_run) & ~diverged
            if not active.any():
                break
            now = counts(np.stack([m.discrepancy for m in self.monitors])) if callable(counts) else counts
            stats = self.iterate(now, active)
            for i in np.flatnonzero(active & ~np.isfinite(stats.loss)):
                diverged[i] = True
                iteration = int(self.learners.iteration[i])
                infos[i] = {"diverged": True, "loss": float(stats.loss[i]), "iteration": iteration,
                            **self.keywords(i)}
                logger.warning("the learner's loss became %s at iteration %d: episode truncated with penalty %s",
                               stats.loss[i], iteration, self.env.divergence_penalty)
        previous = self.score.copy()
        scored = active & ~diverged
        if scored.any():
            self.evaluate(np.flatnonzero(scored))
        rewards = np.zeros(N)
        terminated = np.zeros(N, dtype=bool)
        truncated = diverged.copy()
        for i in np.flatnonzero(diverged):
            rewards[i] = -self.env.divergence_penalty
        for i in np.flatnonzero(scored):
            terminated[i] = remaining[i] <= n_run[i]
            infos[i], rewards[i] = self._reward(i, int(n_run[i]), bool(terminated[i]), float(previous[i]))
        observations = np.stack([self.observation(i) for i in range(N)])
        return observations, rewards, terminated, truncated, infos

    def _reward(self, i: int, n: int, terminated: bool, previous: float) -> tuple[dict[str, Any], float]:
        """Reward and info of episode ``i`` after ``n`` iterations (``previous``: its score before the step)."""
        c, monitor = self.env, self.monitors[i]
        self.count_sum[i] += self.counts[i] * n
        self.count_iterations[i] += n
        score = self.score[i]
        reward_delta = c.reward_delta_weight * (score - previous)
        reward_cmd = -c.reward_cmd_weight * monitor.gap
        reward_terminal = c.reward_terminal_weight * score if terminated else 0.0
        info: dict[str, Any] = {
            "iteration": int(self.learners.iteration[i]), "counts": self.counts[i].copy(),
            "reward_delta": reward_delta, "reward_cmd": reward_cmd, "reward_terminal": reward_terminal,
            "diverged": False, **self.keywords(i),
        }
        return info, float(reward_delta + reward_cmd + reward_terminal)

    @property
    def keyword_names(self) -> list[str]:
        """What the per-modality info keys end with.

        The modality names, or ``slot<k>`` for every slot of a "modalities" observation (fixed whatever
        instance a family env draws; 0 for an unused slot: no samples, no accuracy, and equal infos for
        equal seeds, as Gymnasium's determinism check wants, which a nan is not).
        """
        if self.layout.kind == "modalities":
            return [f"slot{k}" for k in range(self.layout.slots)]
        return list(self.modalities)

    def keywords(self, i: int) -> dict[str, float]:
        """The :meth:`info_keywords` values of episode ``i``: last validation scores, |CMD|, mean counts so far."""
        info = {"val_acc": float(self.score[i]), "gap": self.monitors[i].gap}
        done = max(int(self.count_iterations[i]), 1)
        M = len(self.modalities)
        for k, name in enumerate(self.keyword_names):
            info[f"val_acc_{name}"] = float(self.per_modality[i, k]) if k < M else 0.0
            info[f"mean_count_{name}"] = float(self.count_sum[i, k] / done) if k < M else 0.0
        return info

    def info_keywords(self) -> tuple[str, ...]:
        """The info keys a Monitor should record at the end of an episode."""
        per_modality = [f"{key}_{name}" for key in ("val_acc", "mean_count") for name in self.keyword_names]
        return ("val_acc", "gap", *per_modality)
