"""VecDUSEnv: N DUS envs of one task stepped in one process by a :class:`BatchedLearner`.

An SB3 ``VecEnv`` whose env i behaves as ``DUSEnv`` seeded the same way: the same observation,
reward, termination, truncation and info at every step, given the same actions (to float
tolerance), but the K learner iterations of a step run for all N learners at once. Both are the
same :class:`dus_gym.core.episode.Episodes` logic on another learner backend. With a task family
the N learners share one instance (their parameters are stacked, so their shapes must agree): a
new instance is drawn whenever every env's episode ends at the same step (the episodes have one
length, so they do unless one diverged; an env reset alone keeps the current instance). An env whose
episode ends is reset at once (SB3's auto-reset: the last observation goes to
``info["terminal_observation"]``, a truncation to ``info["TimeLimit.truncated"]``). Wrap it in
``VecMonitor`` for the episode statistics that SB3 logs (``build_vec_env`` does).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn

from dus_gym.core.batched_learner import BatchedLearner
from dus_gym.rl.env import DUSEnv


class VecDUSEnv(VecEnv):
    """N ``DUSEnv`` of the same settings whose learners train together.

    Spaces, rewards and infos are those of :class:`dus_gym.rl.env.DUSEnv` with the same keyword
    arguments; the learner settings must be batchable (sgd, fp32, in-memory data; see
    :func:`dus_gym.core.batched_learner.check_batchable`).

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
        self._use_task()
        self.np_randoms = [seeding.np_random(None)[0] for _ in range(n_envs)]
        self._actions: np.ndarray | None = None
        if seed is not None:
            self.seed(seed)

    @property
    def task(self) -> Any:
        """The one task object whose data every learner shares."""
        return self.template.task

    def _use_task(self) -> None:
        """N batched learners and their episodes on the template's current task."""
        t = self.template
        self.learners = BatchedLearner(t.task, t.learner_config, self.num_envs, probe_size=t.probe_size)
        self.episodes = t.make_episodes(self.learners)

    def _draw_instance(self) -> None:
        """With a family: every env's next episode is on a new instance, drawn with env 0's generator."""
        t = self.template
        instance = int(self.np_randoms[0].choice(t.pool))
        if instance != t.instance:
            t._use(t._instance_task(instance))
            t.instance = instance
            self._use_task()

    def _reset_env(self, i: int) -> tuple[np.ndarray, dict[str, Any]]:
        """DUSEnv.reset for env i: draw the learner seed, start the episode (scored by the caller)."""
        learner_seed = int(self.np_randoms[i].integers(0, 2**31 - 1))
        self.episodes.start(i, learner_seed, checkpoint=self.template.config.start_checkpoint)
        return self.episodes.observation(i), {"learner_seed": learner_seed, **self.template.instance_info()}

    def _reseed(self) -> None:
        for i, seed in enumerate(self._seeds):
            if seed is not None:
                self.np_randoms[i], _ = seeding.np_random(seed)

    def _score(self, envs: np.ndarray | range, infos: list[dict[str, Any]]) -> None:
        self.episodes.evaluate(envs)
        for i in envs:
            infos[i]["val_acc"] = float(self.episodes.score[i])

    def reset(self) -> VecEnvObs:
        """Reset every env (with the seeds and options of :meth:`seed` / ``set_options``, then none)."""
        self._reseed()
        if self.template.family is not None:
            self._draw_instance()
        obs, infos = zip(*(self._reset_env(i) for i in range(self.num_envs)), strict=True)
        self.reset_infos = list(infos)
        self._score(range(self.num_envs), self.reset_infos)
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
        counts = np.stack([self.template.actions.to_counts(a) for a in self._actions])
        self._actions = None
        obs, rewards, terminated, truncated, infos = self.episodes.step(counts)
        obs = obs.astype(np.float32)
        dones = terminated | truncated
        for i in range(self.num_envs):
            infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
        if self.template.instance is not None:
            for info in infos:
                info["instance"] = self.template.instance
        reset = np.flatnonzero(dones)
        for i in reset:
            infos[i]["terminal_observation"] = obs[i].copy()
        if self.template.family is not None and dones.all():
            self._draw_instance()
        for i in reset:
            obs[i], self.reset_infos[i] = self._reset_env(i)
        if len(reset):
            self._score(reset, self.reset_infos)
        return obs, rewards.astype(np.float32), dones, infos

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
