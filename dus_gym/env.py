"""DUSEnv: one multimodal training run as a Gymnasium episode (DESIGN.md §3)."""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from dus_gym.action import CountsAction
from dus_gym.cmd import CMDMonitor, cmd_observation
from dus_gym.config import CMDConfig, EnvConfig, LearnerConfig, from_dict, iteration_budget
from dus_gym.learner import Learner
from dus_gym.tasks import Task, cached_task

logger = logging.getLogger(__name__)


class DUSEnv(gym.Env[np.ndarray, np.ndarray]):
    """Choose how many samples of each modality the learner trains on.

    ## Description

    An episode is one training run of a multimodal learner (encoders, unimodal heads, fusion head;
    DESIGN.md §2) on a task, from a fresh start (or a saved learner checkpoint), for a budget of
    ``n_iterations`` learner iterations. At each step the agent picks per-modality sample counts;
    the learner then runs K = ``iterations_per_step`` iterations with them while the CMD monitor
    follows every iteration.

    ## Action Space

    Samples per modality. Default ``Box(-1, 1, (M,), float32)``: a in [-1, 1] gives
    n = round(n_min + (a + 1) / 2 * (n_max - n_min)) samples (default n_min 8, n_max 256; see
    ``dus_gym.action.CountsAction``). With ``action_type="multidiscrete"``:
    ``MultiDiscrete([L] * M)``, action i picks ``count_levels[i]`` (default 8, 16, ..., 256).

    ## Observation Space

    ``Box((4M + 1,), float32)``, in modality order m = 0..M-1:

    | index     | observation                        | min | max         |
    |-----------|------------------------------------|-----|-------------|
    | 4m        | cumulative status c_t(m)           | 0   | 1           |
    | 4m + 1    | discrepancy d_t(m)                 | -1  | 1           |
    | 4m + 2    | last learning status s(m)          | 0   | 1           |
    | 4m + 3    | last count n(m) / B                | 0   | max count/B |
    | 4M        | training progress t / T            | 0   | 1           |

    ## Rewards

    ``reward_delta_weight`` x (fused validation accuracy now - at the previous step)
    - ``reward_cmd_weight`` x |CMD|, plus ``reward_terminal_weight`` x final fused validation
    accuracy at the last step. Components are in ``info`` (reward_delta, reward_cmd, reward_terminal).

    ## Starting State

    A learner initialised from a seed drawn from ``np_random`` (model init and data order), or the
    learner checkpoint ``start_checkpoint`` with a data order from that seed; CMD zero, counts B.

    ## Episode End

    Terminated when the learner has run ``n_iterations`` iterations (the last step may run fewer
    than K). Truncated when the loss becomes NaN/inf; the reward then is -``divergence_penalty``
    and ``info["diverged"]`` is True.

    ## Arguments

    | argument | default | meaning |
    |---|---|---|
    | task | "synthetic" | task name, "module:function", or a Task |
    | task_kwargs | {} | task builder kwargs |
    | learner | {} | LearnerConfig fields |
    | cmd | {} | CMDConfig fields (status from training batches or a probe) |
    | n_iterations / epochs | 800 / None | episode budget (epochs convert at B) |
    | iterations_per_step ... start_checkpoint | see EnvConfig | step size, action mapping, reward weights |

    ## Version History

    - v0: first version.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        task: str | Task = "synthetic",
        task_kwargs: dict[str, Any] | None = None,
        learner: dict[str, Any] | LearnerConfig | None = None,
        cmd: dict[str, Any] | CMDConfig | None = None,
        n_iterations: int | None = 800,
        epochs: float | None = None,
        render_mode: str | None = None,
        **env_kwargs: Any,
    ) -> None:
        if render_mode is not None:
            raise ValueError(f"DUSEnv has no render modes, got render_mode={render_mode!r}")
        self.task = task if isinstance(task, Task) else cached_task(task, **(task_kwargs or {}))
        self.learner_config = learner if isinstance(learner, LearnerConfig) else from_dict(
            LearnerConfig, learner or {}, "learner")
        self.cmd_config = cmd if isinstance(cmd, CMDConfig) else from_dict(CMDConfig, cmd or {}, "cmd")
        self.config = from_dict(EnvConfig, env_kwargs, "env")
        self.probe_size = self.cmd_config.probe_size if self.cmd_config.source == "probe" else 0
        n_train = len(self.task.splits["train"]) - self.probe_size
        B = self.learner_config.batch_size
        self.n_iterations = iteration_budget(n_iterations, epochs, n_train, B)
        self.n_modalities = len(self.task.modalities)
        c = self.config
        self.actions = CountsAction(self.n_modalities, c.n_min, c.n_max, c.action_type, c.count_levels)
        self.action_space = self.actions.space
        M = self.n_modalities
        low = np.append(np.tile([0.0, -1.0, 0.0, 0.0], M), 0.0).astype(np.float32)
        high = np.append(np.tile([1.0, 1.0, 1.0, max(self.actions.max_count, B) / B], M), 1.0).astype(np.float32)
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        self.learner: Learner | None = None
        self.monitor = CMDMonitor(M, window=self.cmd_config.window)

    @property
    def settings(self) -> dict[str, Any]:
        """What a policy needs to act like in this env elsewhere (saved with a trained policy)."""
        return {"task": self.task.name, "modalities": list(self.task.modalities),
                "batch_size": self.learner_config.batch_size, "n_iterations": self.n_iterations,
                "cmd": asdict(self.cmd_config), "env": asdict(self.config)}

    def _observation(self) -> np.ndarray:
        progress = (self.learner.iteration - self._start_iteration) / self.n_iterations
        obs = cmd_observation(self.monitor, self._counts, self.learner_config.batch_size, min(progress, 1.0))
        return np.clip(obs, self.observation_space.low, self.observation_space.high)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Start a new training run; ``seed`` reseeds model initialisation and data order."""
        super().reset(seed=seed)
        learner_seed = int(self.np_random.integers(0, 2**31 - 1))
        self.learner = Learner(self.task, self.learner_config, seed=learner_seed, probe_size=self.probe_size)
        if self.config.start_checkpoint is not None:
            self.learner.load(self.config.start_checkpoint)
            self.learner.planner.reseed(learner_seed)
        self._start_iteration = self.learner.iteration
        self.monitor.reset()
        B = self.learner_config.batch_size
        self._counts = np.full(self.n_modalities, B, dtype=np.int64)
        self._last_status = np.zeros(self.n_modalities)
        self._count_sum = np.zeros(self.n_modalities)
        self._score, self._per_modality = self.learner.accuracies("val")
        return self._observation(), {"val_acc": self._score, "learner_seed": learner_seed}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Run K learner iterations with the counts of ``action``."""
        if self.learner is None:
            raise RuntimeError("call reset() before step()")
        counts = self.actions.to_counts(action)
        remaining = self._start_iteration + self.n_iterations - self.learner.iteration
        if remaining <= 0:
            raise RuntimeError("the episode has ended; call reset()")
        n = min(self.config.iterations_per_step, remaining)
        for _ in range(n):
            stats = self.learner.step(counts)
            counts = stats.counts  # as used by the learner (after quantisation)
            if not stats.finite:
                self._counts = counts
                info = {"diverged": True, "loss": stats.loss, "iteration": self.learner.iteration,
                        **self._monitored(self.learner.iteration - self._start_iteration)}
                logger.warning("the learner's loss became %s at iteration %d: episode truncated with penalty %s",
                               stats.loss, self.learner.iteration, self.config.divergence_penalty)
                return self._observation(), -float(self.config.divergence_penalty), False, True, info
            if self.probe_size:
                status = self.learner.probe_status()
            else:
                status = np.where(np.isnan(stats.status), self._last_status, stats.status)
            self._last_status = status
            self.monitor.update(status)
        self._counts = counts
        self._count_sum += counts * n
        score, per_modality = self.learner.accuracies("val")
        c = self.config
        terminated = self.learner.iteration - self._start_iteration >= self.n_iterations
        reward_delta = c.reward_delta_weight * (score - self._score)
        reward_cmd = -c.reward_cmd_weight * self.monitor.gap
        reward_terminal = c.reward_terminal_weight * score if terminated else 0.0
        self._score, self._per_modality = score, per_modality
        info: dict[str, Any] = {
            "iteration": self.learner.iteration, "counts": counts.copy(), "reward_delta": reward_delta,
            "reward_cmd": reward_cmd, "reward_terminal": reward_terminal, "diverged": False,
            **self._monitored(self.learner.iteration - self._start_iteration),
        }
        reward = float(reward_delta + reward_cmd + reward_terminal)
        return self._observation(), reward, terminated, False, info

    def _monitored(self, done_iterations: int) -> dict[str, float]:
        """The :meth:`info_keywords` values: last validation scores, |CMD| and mean counts so far."""
        info = {"val_acc": self._score, "gap": self.monitor.gap}
        for k, m in enumerate(self.task.modalities):
            info[f"val_acc_{m}"] = self._per_modality[m]
            info[f"mean_count_{m}"] = float(self._count_sum[k] / max(1, done_iterations))
        return info

    def info_keywords(self) -> tuple[str, ...]:
        """The info keys a Monitor should record at the end of an episode."""
        per_modality = [f"{key}_{m}" for key in ("val_acc", "mean_count") for m in self.task.modalities]
        return ("val_acc", "gap", *per_modality)
