"""N DUS envs of one task stepped in one process by a :class:`BatchedLearner`: the shared core and SB3's VecDUSEnv.

:class:`BatchedEnvs` resets any of the N envs and steps them together; it has no auto-reset of its
own. :class:`VecDUSEnv` puts SB3's auto-reset and info layout on it, and
:class:`dus_gym.rl.vector_env.DUSVectorEnv` Gymnasium's. ``VecDUSEnv`` is an SB3 ``VecEnv`` whose
env i behaves as ``DUSEnv`` seeded the same way: the same observation, reward, termination,
truncation and info at every step, given the same actions (to float tolerance), but the K learner
iterations of a step run for all N learners at once. Both are the same
:class:`dus_gym.core.episode.Episodes` logic on another learner backend. With a task family the N
learners share one instance (their parameters are stacked, so their shapes must agree): a new
instance is drawn whenever every env's episode ends at the same step (the episodes have one length,
so they do unless one diverged; an env reset alone keeps the current instance). An env whose episode
ends is reset at once (SB3's auto-reset: the last observation goes to
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
from dus_gym.core.config import check_n_envs, shown
from dus_gym.core.episode import Episodes
from dus_gym.rl.env import DUSEnv
from dus_gym.samplers.action import ActionError


class BatchedEnvs:
    """N ``DUSEnv`` of the same settings whose learners train together: reset any of them, step all of them.

    Env i draws its learner seeds from its own generator, as ``DUSEnv`` does from ``np_random``, so
    that env i seeded with s behaves as ``DUSEnv`` reset with seed s. The learner settings must be
    batchable (sgd, fp32, in-memory data; see :func:`dus_gym.core.batched_learner.check_batchable`).

    Args:
        n_envs: N.
        **dus_kwargs: the keyword arguments of ``DUSEnv``.
    """

    def __init__(self, n_envs: int, **dus_kwargs: Any) -> None:
        n_envs = check_n_envs(n_envs)  # before any work: a type and a bound
        self.n_envs = n_envs
        self.template = DUSEnv(**dus_kwargs)
        self.np_randoms = [seeding.np_random(None)[0] for _ in range(n_envs)]
        self._use_task()

    @property
    def task(self) -> Any:
        """The one task object whose data every learner shares."""
        return self.template.task

    def _use_task(self) -> None:
        """N batched learners and their episodes on the template's current task."""
        t = self.template
        self.learners = BatchedLearner(t.task, t.learner_config, self.n_envs, probe_size=t.probe_size)
        self.episodes = t.make_episodes(self.learners)

    def seed(self, i: int, seed: int | None) -> None:
        """Reseed env i's generator (as ``DUSEnv.reset(seed=...)``; None keeps it)."""
        if seed is not None:
            self.np_randoms[i], _ = seeding.np_random(seed)

    def check_actions(self, actions: Any) -> np.ndarray:
        """``actions`` as an array of one valid action per env (each checked as ``DUSEnv.step`` checks it).

        Raises:
            ActionError: not one action per env, or an action outside the action space (wrong shape or
                dtype, complex, NaN/inf, out of range), whether or not its env runs this step.
        """
        try:
            array = np.asarray(actions)
        except (ValueError, TypeError) as err:  # ragged sequences
            raise ActionError(f"actions {shown(actions)} are not an array ({err}); expected one action per env "
                              f"({self.n_envs})") from err
        if array.ndim == 0 or len(array) != self.n_envs:
            raise ActionError(f"expected {self.n_envs} actions (one per env), got {shown(actions)}")
        for action in array:
            self.template.actions.to_counts(action)
        return array

    def draw_instance(self, instance: int | None = None) -> None:
        """With a family: every env's next episode is on ``instance``, or one drawn with env 0's generator."""
        t = self.template
        if instance is not None and t.family is not None:
            t.family.check_instance(instance)
        if t.family is None:
            if instance is not None:
                raise ValueError("reset(options={'instance': ...}) needs a family env")
            return
        instance = int(self.np_randoms[0].choice(t.pool)) if instance is None else int(instance)
        if instance != t.instance:
            t._use(t._instance_task(instance))
            t.instance = instance
            self._use_task()

    def reset(self, envs: np.ndarray | list[int] | range) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """``DUSEnv.reset`` of ``envs``: a learner seed drawn from each one's generator, the episode started, scored.

        Returns the observations of ``envs`` (one row each) and their infos.
        """
        envs = [int(i) for i in envs]
        infos = []
        for i in envs:
            learner_seed = int(self.np_randoms[i].integers(0, 2**31 - 1))
            self.episodes.start(i, learner_seed, checkpoint=self.template.config.start_checkpoint)
            infos.append({"learner_seed": learner_seed, **self.template.instance_info()})
        self.episodes.evaluate(envs)
        for i, info in zip(envs, infos, strict=True):
            info["val_acc"] = float(self.episodes.score[i])
        obs = np.stack([self.episodes.observation(i) for i in envs]) if envs else np.zeros((0,))
        return obs, infos

    def step(self, actions: np.ndarray, active: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        """``DUSEnv.step`` of the ``active`` envs (default all) together; the others run nothing (reward 0, info {}).

        Returns (observations float32, rewards float32, terminated, truncated, infos) of all N envs.
        """
        active = np.ones(self.n_envs, dtype=bool) if active is None else np.asarray(active, dtype=bool)
        t = self.template
        counts = np.stack([t.actions.to_counts(a) if on else np.full(self.episodes.counts.shape[1], 1)
                           for a, on in zip(actions, active, strict=True)])
        obs, rewards, terminated, truncated, infos = self.episodes.step(counts, active)
        if t.instance is not None:
            for i in np.flatnonzero(active):
                infos[i]["instance"] = t.instance
        return obs.astype(np.float32), rewards.astype(np.float32), terminated, truncated, infos


class VecDUSEnv(VecEnv):
    """N ``DUSEnv`` of the same settings whose learners train together (SB3's ``VecEnv``).

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
        self.batch = BatchedEnvs(n_envs, **dus_kwargs)
        self.template = self.batch.template
        super().__init__(n_envs, self.template.observation_space, self.template.action_space)
        self._actions: np.ndarray | None = None
        self._closed = False
        if seed is not None:
            self.seed(seed)

    @property
    def task(self) -> Any:
        """The one task object whose data every learner shares."""
        return self.batch.task

    @property
    def learners(self) -> BatchedLearner:
        """The N batched learners."""
        return self.batch.learners

    @property
    def episodes(self) -> Episodes:
        """The N episodes."""
        return self.batch.episodes

    def reset(self) -> VecEnvObs:
        """Reset every env (with the seeds and options of :meth:`seed` / ``set_options``, then none)."""
        if self._closed:
            raise RuntimeError("this VecDUSEnv is closed; make a new one")
        for i, seed in enumerate(self._seeds):
            self.batch.seed(i, seed)
        self.batch.draw_instance()
        obs, self.reset_infos = self.batch.reset(range(self.num_envs))
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        """Remember the actions (checked now); the work happens in :meth:`step_wait`."""
        if self._closed:
            raise RuntimeError("this VecDUSEnv is closed; make a new one")
        self._actions = self.batch.check_actions(actions)

    def step_wait(self) -> VecEnvStepReturn:
        """Run K learner iterations of every env together, then score, reward and auto-reset."""
        if self._actions is None:
            raise RuntimeError("call step_async(actions) before step_wait()")
        actions, self._actions = self._actions, None
        obs, rewards, terminated, truncated, infos = self.batch.step(actions)
        dones = terminated | truncated
        for i in range(self.num_envs):
            infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
        reset = np.flatnonzero(dones)
        for i in reset:
            infos[i]["terminal_observation"] = obs[i].copy()
        if dones.all():
            self.batch.draw_instance()
        if len(reset):
            obs[reset], new_infos = self.batch.reset(reset)
            for i, info in zip(reset, new_infos, strict=True):
                self.reset_infos[i] = info
        return obs, rewards, dones, infos

    def close(self) -> None:
        """Nothing to release (one process, no workers); a closed VecDUSEnv refuses reset and step."""
        self._closed = True

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
