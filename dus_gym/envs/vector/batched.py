"""N DUS envs stepped in one process by a :class:`BatchedLearner`: the shared core and SB3's VecDUSEnv.

:class:`BatchedEnvs` resets any of the N envs and steps them together; it has no auto-reset of its
own. :class:`VecDUSEnv` puts SB3's auto-reset and info layout on it, and
:class:`dus_gym.envs.vector.gymnasium_vector_env.DUSVectorEnv` Gymnasium's. ``VecDUSEnv`` is an SB3 ``VecEnv`` whose
env i behaves as ``DUSEnv`` seeded the same way: the same observation, reward, termination,
truncation and info at every step, given the same actions (to float tolerance), but the K learner
iterations of a step run for all N learners at once. Both are the same
:class:`dus_gym.core.episode.Episodes` logic on another learner backend.

With a task family each env's learner trains on its own instance. The stacked parameters need
instances of equal shapes (:func:`dus_gym.core.batched_learner.task_shape_key`), so the pool's
instances are grouped by shape (once, building every instance): env 0 draws an instance with its
generator, as ``DUSEnv`` does, and every other env draws, with its own generator, an instance of
that group that no other env of the batch has (while the group has one; in a group of fewer than N
instances they repeat). ``info["instance"]`` is each env's. A new draw happens whenever every env's
episode ends at the same step (the episodes have one length, so they do unless one diverged; an env
reset alone keeps its instance). ``env.shared_instance: true`` puts all N learners on the instance
env 0 draws instead.

An env whose episode ends is reset at once (SB3's auto-reset: the last observation goes to
``info["terminal_observation"]``, a truncation to ``info["TimeLimit.truncated"]``). Wrap it in
``VecMonitor`` for the episode statistics that SB3 logs (``build_vec_env`` does).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn

from dus_gym.core.batched_learner import BatchedLearner, task_shape_key
from dus_gym.core.config import check_n_envs, shown
from dus_gym.core.episode import Episodes
from dus_gym.envs.env import DUSEnv, family_instance_info
from dus_gym.samplers.action import ActionError
from dus_gym.tasks import Task, cached_task
from dus_gym.tasks.families import TaskFamily


class BatchedEnvs:
    """N ``DUSEnv`` of the same settings whose learners train together: reset any of them, step all of them.

    Env i draws its learner seeds from its own generator, as ``DUSEnv`` does from ``np_random``, so
    that env i seeded with s behaves as ``DUSEnv`` reset with seed s. The learner settings must be
    batchable (sgd, fp32, in-memory data; see :func:`dus_gym.core.batched_learner.check_batchable`).
    With a task family, env i's learner is on its own instance, ``instances[i]`` (all on one with
    ``env.shared_instance``); see :meth:`draw_instance`.

    Args:
        n_envs: N.
        **dus_kwargs: the keyword arguments of ``DUSEnv``.
    """

    def __init__(self, n_envs: int, **dus_kwargs: Any) -> None:
        n_envs = check_n_envs(n_envs)  # before any work: a type and a bound
        self.n_envs = n_envs
        self.template = DUSEnv(**dus_kwargs)
        self.np_randoms = [seeding.np_random(None)[0] for _ in range(n_envs)]
        self.instances: list[int | None] = [self.template.instance] * n_envs  # env i's instance (None: no family)
        self.per_env = self.template.family is not None and not self.template.config.shared_instance
        self._groups: dict[tuple[Any, ...], list[int]] | None = None
        self._keys: dict[int, tuple[Any, ...]] = {}
        self._use_task()

    @property
    def task(self) -> Any:
        """Env 0's task (with a family, every env's task has its shapes: :func:`task_shape_key`)."""
        return self.template.task

    def _use_task(self, tasks: Sequence[Task] | None = None) -> None:
        """N batched learners and their episodes on the template's current task (learner i on ``tasks[i]``)."""
        t = self.template
        self.learners = BatchedLearner(t.task, t.learner_config, self.n_envs, probe_size=t.probe_size, tasks=tasks)
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

    def instance_info(self, i: int) -> dict[str, Any]:
        """Env i's instance of a family (as ``DUSEnv.instance_info``); {} without."""
        # the instances of one batch have equal shapes: env 0's M is every env's
        return family_instance_info(self.template.family, self.instances[i], len(self.template.task.modalities))

    def draw_instance(self, instance: int | Sequence[int | None] | None = None) -> None:
        """With a family: the instances of every env's next episode.

        ``instance`` None draws them; an int puts every env on that instance; a sequence names env
        i's instance (None: drawn). A draw picks one instance of the pool with env 0's generator
        (as ``DUSEnv``); with ``shared_instance`` every env is on it, else each env left unnamed draws,
        with its own generator, an instance of the pool of the same shapes (:func:`task_shape_key`)
        that no other env of the batch has, while there is one (then they repeat).

        Raises:
            ValueError: an instance is named without a family, the sequence is not one per env, the
                named instances differ in shapes (or differ at all with ``shared_instance``).
        """
        t = self.template
        if instance is not None and t.family is not None:
            for k in instance if isinstance(instance, Sequence) and not isinstance(instance, str) else [instance]:
                if k is not None:
                    t.family.check_instance(k)
        if t.family is None:
            if instance is not None and not (isinstance(instance, Sequence) and all(k is None for k in instance)):
                raise ValueError("reset(options={'instance': ...}) needs a family env")
            return
        if instance is None or isinstance(instance, (int, np.integer)):
            named: list[int | None] = [None if instance is None else int(instance)] * self.n_envs
        else:
            named = [None if k is None else int(k) for k in instance]
            if len(named) != self.n_envs:
                raise ValueError(f"need one instance per env ({self.n_envs}), got {len(named)}")
        if not self.per_env:
            chosen = {k for k in named if k is not None}
            if len(chosen) > 1:
                raise ValueError(f"env.shared_instance puts every env on one instance, got {sorted(chosen)}")
            shared = chosen.pop() if chosen else int(self.np_randoms[0].choice(t.pool))
            if shared != t.instance:
                t._use(t._instance_task(shared))
                t.instance = shared
                self._use_task()
            self.instances = [shared] * self.n_envs
            return
        self._put_on(self._assign(named))

    def _assign(self, named: list[int | None]) -> list[int]:
        """Every env's instance: the named ones, the others drawn from the shape group of the first one.

        Unless named, env 0 draws from the pool (as ``DUSEnv``) and each other env draws an instance of
        that group not yet taken in this batch, each with its own generator (one draw per env, as
        ``DUSEnv``); once the group is used up, its instances are drawn again.
        """
        t = self.template
        if all(k is not None for k in named):
            return [int(k) for k in named]  # type: ignore[arg-type]
        if named[0] is None and all(k is None for k in named):
            named = [int(self.np_randoms[0].choice(t.pool)), *named[1:]]
        anchor = next(int(k) for k in named if k is not None)
        group = self._group_of(anchor) or [anchor]
        taken = {k for k in named if k is not None}
        remaining = [k for k in group if k not in taken]
        chosen = []
        for i, k in enumerate(named):
            if k is None:
                if not remaining:  # every instance of the group is in use: cycle
                    remaining = list(group)
                k = remaining.pop(int(self.np_randoms[i].integers(len(remaining))))
            chosen.append(int(k))
        return chosen

    def _key(self, instance: int) -> tuple[Any, ...]:
        if instance not in self._keys:
            self._keys[instance] = instance_shape_key(self.template.family, instance)
        return self._keys[instance]

    def _group_of(self, instance: int) -> list[int]:
        """The pool's instances of ``instance``'s shapes (built once: the pool grouped by shape key)."""
        if self._groups is None:
            self._groups = {}
            for k in self.template.pool:
                self._groups.setdefault(self._key(k), []).append(k)
        return self._groups.get(self._key(instance), [])

    def _put_on(self, instances: list[int]) -> None:
        """Env i's next episode on ``instances[i]`` (env 0's instance is the template's)."""
        t = self.template
        key = self._key(instances[0])
        for k in instances:
            if self._key(k) != key:
                raise ValueError(f"instances {instances[0]} and {k} differ in shapes (modalities, features, splits or "
                                 "encoders); the envs of one batch need instances of equal shapes")
        tasks = {k: t._instance_task(k) for k in dict.fromkeys(instances)}
        if instances[0] != t.instance:
            t._use(tasks[instances[0]])
            t.instance = instances[0]
        per_learner = [tasks[k] for k in instances]
        if key == self.learners.shape_key:
            self.learners.set_tasks(per_learner)
        else:
            self._use_task(per_learner)
        self.instances = list(instances)

    def reset(self, envs: np.ndarray | list[int] | range) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """``DUSEnv.reset`` of ``envs``: a learner seed drawn from each one's generator, the episode started, scored.

        Returns the observations of ``envs`` (one row each) and their infos.
        """
        envs = [int(i) for i in envs]
        infos = []
        for i in envs:
            learner_seed = int(self.np_randoms[i].integers(0, 2**31 - 1))
            self.episodes.start(i, learner_seed, checkpoint=self.template.config.start_checkpoint)
            infos.append({"learner_seed": learner_seed, **self.instance_info(i)})
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
        ones = np.ones(self.episodes.counts.shape[1], dtype=np.int64)
        if t.actions.reacts:  # the strength action: every episode's counts from its d_t, at every iteration
            alphas = np.array([t.actions.alpha(a) for a in actions])
            rule: np.ndarray | Callable[[np.ndarray], np.ndarray] = functools.partial(t.actions.strength_counts, alphas)
        else:  # the others: once per step (an inactive env's counts are not used)
            rule = np.stack([t.actions.to_counts(a) if on else ones for a, on in zip(actions, active, strict=True)])
        obs, rewards, terminated, truncated, infos = self.episodes.step(rule, active)
        if t.family is not None:
            for i in np.flatnonzero(active):
                infos[i]["instance"], infos[i]["n_modalities"] = self.instances[i], len(t.task.modalities)
        return obs.astype(np.float32), rewards.astype(np.float32), terminated, truncated, infos


def instance_shape_key(family: TaskFamily, instance: int) -> tuple[Any, ...]:
    """:func:`task_shape_key` of a family's instance, computed once per process for the same task kwargs."""
    try:
        frozen = json.dumps(family.task_kwargs(instance), sort_keys=True)
    except TypeError:  # kwargs that are not JSON: no sharing
        return task_shape_key(family.make(instance))
    return _instance_shape_key(family.task, frozen)


@functools.lru_cache(maxsize=4096)
def _instance_shape_key(task: str, frozen_kwargs: str) -> tuple[Any, ...]:
    return task_shape_key(cached_task(task, **json.loads(frozen_kwargs)))


class VecDUSEnv(VecEnv):
    """N ``DUSEnv`` of the same settings whose learners train together (SB3's ``VecEnv``).

    Spaces, rewards and infos are those of :class:`dus_gym.envs.env.DUSEnv` with the same keyword
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
        """Env 0's task (with a family, each env's learner may be on another instance of its shapes)."""
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
        """Reset every env (with the seeds and options of :meth:`seed` / ``set_options``, then none).

        With a family, ``set_options({"instance": k})`` puts every env on instance k, and a list of
        options env i on its ``"instance"`` (the others drawn from its shape group).
        """
        if self._closed:
            raise RuntimeError("this VecDUSEnv is closed; make a new one")
        for i, seed in enumerate(self._seeds):
            self.batch.seed(i, seed)
        named = [options.get("instance") for options in self._options]
        self.batch.draw_instance(named if any(k is not None for k in named) else None)
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
        """An attribute of the env settings (``settings``, ``n_iterations``...), the same for every env.

        ``instance`` and ``task`` are each env's own (with a family, its instance and that instance's task).
        """
        if attr_name == "instance":
            return [self.batch.instances[i] for i in self._get_indices(indices)]
        if attr_name == "task":
            return [self.learners.task_of(i) for i in self._get_indices(indices)]
        return [getattr(self.template, attr_name) for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Refused: the N envs share one set of settings, fixed at construction."""
        raise AttributeError(f"VecDUSEnv shares one set of env settings; cannot set '{attr_name}' per env")

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        """Call a method of the env settings (e.g. ``info_keywords``) once per index (``instance_info``: each env's)."""
        if method_name == "instance_info":
            return [self.batch.instance_info(i) for i in self._get_indices(indices)]
        method = getattr(self.template, method_name)
        return [method(*method_args, **method_kwargs) for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        """No env is wrapped by a Gymnasium wrapper (use VecMonitor for episode statistics)."""
        return [False for _ in self._get_indices(indices)]

    def info_keywords(self) -> tuple[str, ...]:
        """The info keys a VecMonitor should record at the end of an episode."""
        return self.template.info_keywords()
