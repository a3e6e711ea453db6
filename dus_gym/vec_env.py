"""VecDUSEnv: N DUS envs of one task stepped in one process by a :class:`BatchedLearner`.

An SB3 ``VecEnv`` whose env i behaves as ``DUSEnv`` seeded the same way: the same observation,
reward, termination, truncation and info at every step, given the same actions (to float
tolerance), but the K learner iterations of a step run for all N learners at once. Each env keeps
its own counts, data order, CMD monitor and episode; an env whose episode ends is reset at once
(SB3's auto-reset: the last observation goes to ``info["terminal_observation"]``, a truncation to
``info["TimeLimit.truncated"]``). Wrap it in ``VecMonitor`` for the episode statistics that SB3
logs (``build_vec_env`` does).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn

from dus_gym.batched_learner import BatchedLearner
from dus_gym.cmd import CMDMonitor, cmd_observation
from dus_gym.env import DUSEnv


class VecDUSEnv(VecEnv):
    """N ``DUSEnv`` of the same settings whose learners train together (DESIGN.md §3; issue #6).

    Spaces, rewards and infos are those of :class:`dus_gym.env.DUSEnv` with the same keyword
    arguments (a diverged step's info also carries the monitored keywords, see
    :meth:`_last_episode_keywords`); the learner settings must be batchable (sgd, fp32, in-memory
    data; see :func:`dus_gym.batched_learner.check_batchable`).

    Args:
        n_envs: N.
        seed: env i's first reset is seeded with ``seed + i`` (None: unseeded).
        **dus_kwargs: the keyword arguments of ``DUSEnv`` (task, task_kwargs, learner, cmd,
            n_iterations, epochs and EnvConfig fields).
    """

    def __init__(self, n_envs: int, seed: int | None = None, **dus_kwargs: Any) -> None:
        self.template = DUSEnv(**dus_kwargs)
        t = self.template
        super().__init__(n_envs, t.observation_space, t.action_space)
        self.learners = BatchedLearner(t.task, t.learner_config, n_envs, probe_size=t.probe_size)
        M = t.n_modalities
        self.monitors = [CMDMonitor(M, window=t.cmd_config.window) for _ in range(n_envs)]
        self.np_randoms = [seeding.np_random(None)[0] for _ in range(n_envs)]
        self._counts = np.zeros((n_envs, M), dtype=np.int64)
        self._last_status = np.zeros((n_envs, M))
        self._count_sum = np.zeros((n_envs, M))
        self._count_iterations = np.zeros(n_envs, dtype=np.int64)
        self._score = np.zeros(n_envs)
        self._per_modality = np.zeros((n_envs, M))
        self._start_iteration = np.zeros(n_envs, dtype=np.int64)
        self._actions: np.ndarray | None = None
        self._started = np.zeros(n_envs, dtype=bool)
        if seed is not None:
            self.seed(seed)

    @property
    def task(self) -> Any:
        """The one task object whose data every learner shares."""
        return self.template.task

    def _reset_env(self, i: int) -> tuple[np.ndarray, dict[str, Any]]:
        """DUSEnv.reset for env i: draw the learner seed, start the learner, zero the CMD."""
        seed = self._seeds[i]
        if seed is not None:
            self.np_randoms[i], _ = seeding.np_random(seed)
        learner_seed = int(self.np_randoms[i].integers(0, 2**31 - 1))
        self.learners.reset_learner(i, learner_seed, checkpoint=self.template.config.start_checkpoint)
        self._start_iteration[i] = self.learners.iteration[i]
        self.monitors[i].reset()
        B = self.template.learner_config.batch_size
        self._counts[i] = B
        self._last_status[i] = 0.0
        self._count_sum[i] = 0.0
        self._count_iterations[i] = 0
        self._started[i] = True
        return self._observation(i), {"learner_seed": learner_seed}

    def _observation(self, i: int) -> np.ndarray:
        t = self.template
        progress = (self.learners.iteration[i] - self._start_iteration[i]) / t.n_iterations
        obs = cmd_observation(self.monitors[i], self._counts[i], t.learner_config.batch_size, min(progress, 1.0))
        return np.clip(obs, t.observation_space.low, t.observation_space.high)

    def _validation(self, envs: Iterable[int], infos: Sequence[dict[str, Any]]) -> None:
        """Score the learners of ``envs`` on the validation split (all learners in one pass)."""
        fused, per_modality = self.learners.accuracies("val")
        for i in envs:
            self._score[i] = fused[i]
            self._per_modality[i] = per_modality[i]
            infos[i]["val_acc"] = float(fused[i])

    def reset(self) -> VecEnvObs:
        """Reset every env (with the seeds and options of :meth:`seed` / ``set_options``, then none)."""
        infos: list[dict[str, Any]] = []
        obs = []
        for i in range(self.num_envs):
            o, info = self._reset_env(i)
            obs.append(o)
            infos.append(info)
        self._validation(range(self.num_envs), infos)
        self.reset_infos = infos
        self._reset_seeds()
        self._reset_options()
        return np.stack(obs)

    def step_async(self, actions: np.ndarray) -> None:
        """Remember the actions; the work happens in :meth:`step_wait`."""
        self._actions = np.asarray(actions)

    def step_wait(self) -> VecEnvStepReturn:
        """Run K learner iterations of every env together, then score, reward and auto-reset."""
        if self._actions is None:
            raise RuntimeError("call step_async(actions) before step_wait()")
        if not self._started.all():
            raise RuntimeError("call reset() before step()")
        t, N = self.template, self.num_envs
        counts = np.stack([t.actions.to_counts(a) for a in self._actions])
        self._actions = None
        remaining = self._start_iteration + t.n_iterations - self.learners.iteration
        n_run = np.minimum(t.config.iterations_per_step, remaining)
        diverged = np.zeros(N, dtype=bool)
        infos: list[dict[str, Any]] = [{} for _ in range(N)]
        for it in range(int(n_run.max())):
            active = (it < n_run) & ~diverged
            if not active.any():
                break
            stats = self.learners.step(counts, active)
            counts = np.where(active[:, None], stats.counts, counts)
            probe = self.learners.probe_status() if t.probe_size else None
            for i in np.flatnonzero(active):
                if not np.isfinite(stats.loss[i]):
                    diverged[i] = True
                    infos[i] = {"diverged": True, "loss": float(stats.loss[i]),
                                "iteration": int(self.learners.iteration[i]), **self._last_episode_keywords(i)}
                    continue
                status = probe[i] if probe is not None else np.where(
                    np.isnan(stats.status[i]), self._last_status[i], stats.status[i])
                self._last_status[i] = status
                self.monitors[i].update(status)
        fused, per_modality = self.learners.accuracies("val")
        obs = np.zeros((N, *self.observation_space.shape), dtype=np.float32)
        rewards = np.zeros(N, dtype=np.float32)
        dones = np.zeros(N, dtype=bool)
        c = t.config
        for i in range(N):
            self._counts[i] = counts[i]
            if diverged[i]:
                obs[i], rewards[i], terminated, truncated = self._observation(i), -c.divergence_penalty, False, True
            else:
                terminated, truncated = bool(remaining[i] <= n_run[i]), False
                infos[i], rewards[i] = self._step_info(i, counts[i], int(n_run[i]), fused[i], per_modality[i],
                                                       terminated)
                obs[i] = self._observation(i)
            dones[i] = terminated or truncated
            infos[i]["TimeLimit.truncated"] = truncated and not terminated
        reset = np.flatnonzero(dones)
        for i in reset:
            infos[i]["terminal_observation"] = obs[i].copy()
            obs[i], self.reset_infos[i] = self._reset_env(i)
        if len(reset):
            self._validation(reset, self.reset_infos)
        return obs, rewards, dones, infos

    def _step_info(self, i: int, counts: np.ndarray, n: int, score: float, per_modality: np.ndarray,
                   terminated: bool) -> tuple[dict[str, Any], float]:
        """DUSEnv.step's reward and info for env i after its ``n`` iterations."""
        t, c, monitor = self.template, self.template.config, self.monitors[i]
        self._count_sum[i] += counts * n
        self._count_iterations[i] += n
        reward_delta = c.reward_delta_weight * (score - self._score[i])
        reward_cmd = -c.reward_cmd_weight * monitor.gap
        reward_terminal = c.reward_terminal_weight * score if terminated else 0.0
        self._score[i] = score
        self._per_modality[i] = per_modality
        iteration = int(self.learners.iteration[i])
        info: dict[str, Any] = {
            "val_acc": float(score), "gap": monitor.gap, "iteration": iteration, "counts": counts.copy(),
            "reward_delta": reward_delta, "reward_cmd": reward_cmd, "reward_terminal": reward_terminal,
            "diverged": False,
        }
        done_iterations = iteration - self._start_iteration[i]
        for k, m in enumerate(t.task.modalities):
            info[f"val_acc_{m}"] = float(per_modality[k])
            info[f"mean_count_{m}"] = float(self._count_sum[i, k] / done_iterations)
        return info, float(reward_delta + reward_cmd + reward_terminal)

    def _last_episode_keywords(self, i: int) -> dict[str, float]:
        """The info keywords of a diverged episode: the last scores and the mean counts so far.

        ``DUSEnv`` leaves them out of a diverged step's info; here they are given so that a VecMonitor
        recording them (as ``train_policy`` sets it up) does not fail on a diverged episode.
        """
        done_iterations = max(int(self._count_iterations[i]), 1)
        keywords = {"val_acc": float(self._score[i]), "gap": self.monitors[i].gap}
        for k, m in enumerate(self.template.task.modalities):
            keywords[f"val_acc_{m}"] = float(self._per_modality[i, k])
            keywords[f"mean_count_{m}"] = float(self._count_sum[i, k] / done_iterations)
        return keywords

    def close(self) -> None:
        """Nothing to release (one process, no workers)."""

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """An attribute of the env settings (``settings``, ``task``, ``n_iterations``...), the same for every env."""
        return [getattr(self.template, attr_name) for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Refused: the N envs share one set of settings, fixed at construction."""
        raise AttributeError(f"VecDUSEnv shares one set of env settings; cannot set '{attr_name}' per env")

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        """Call a method of the env settings (e.g. ``info_keywords``) once per index."""
        method = getattr(self.template, method_name)
        return [method(*method_args, **method_kwargs) for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        """No env is wrapped by a Gymnasium wrapper (use VecMonitor for episode statistics)."""
        return [False for _ in self._get_indices(indices)]

    def info_keywords(self) -> tuple[str, ...]:
        """The info keys a VecMonitor should record at the end of an episode."""
        return self.template.info_keywords()
