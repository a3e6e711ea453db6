"""RayVecEnv: an SB3 VecEnv whose envs are Ray actors, for learners spread over a cluster.

Each env lives in its own Ray actor, with the CPU and GPU share of :class:`RayVecEnvConfig`; Ray
places the actors on the nodes of the cluster that have those resources free. ``step_async``
sends every action at once and ``step_wait`` gathers the results, so the envs' learners train in
parallel wherever they run. Episode ends are handled in the actor as ``DummyVecEnv`` does
(auto-reset, ``terminal_observation``, ``TimeLimit.truncated``).

Ray is an optional dependency: ``pip install "dus-gym[ray]"``. Every node needs dus-gym installed
(or a Ray ``runtime_env`` that installs it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn

from dus_gym.core.config import ConfigError


@dataclass(frozen=True)
class RayVecEnvConfig:
    """Where the env actors run and what each may use (``TrainPolicyConfig.ray``)."""

    address: str | None = None
    """Ray cluster to join: None starts a local runtime unless one is already initialised; "auto" joins the
    cluster this machine is a node of; "ray://head:10001" connects through Ray Client."""
    num_cpus_per_env: float = 1.0
    """CPUs reserved by each env actor."""
    num_gpus_per_env: float = 0.0
    """GPUs reserved by each env actor (fractions share a GPU); the actor's learner then sees them as cuda:0..."""
    init_kwargs: dict[str, Any] = field(default_factory=dict)
    """Further ``ray.init`` keyword arguments (e.g. num_cpus, include_dashboard, runtime_env)."""

    def __post_init__(self) -> None:
        if self.num_cpus_per_env < 0 or self.num_gpus_per_env < 0:
            raise ConfigError("ray.num_cpus_per_env and ray.num_gpus_per_env must be >= 0")


class _EnvWorker:
    """The body of one env actor: builds the env and steps it as DummyVecEnv steps one env."""

    def __init__(self, env_fn: Callable[[], gym.Env]) -> None:
        self.env = env_fn()

    def reset(self, seed: int | None, options: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        return self.env.reset(seed=seed, **({"options": options} if options else {}))

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, dict[str, Any], dict[str, Any] | None]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        done = terminated or truncated
        info["TimeLimit.truncated"] = truncated and not terminated
        reset_info = None
        if done:
            info["terminal_observation"] = obs
            obs, reset_info = self.env.reset()
        return obs, float(reward), done, info, reset_info

    def get_attr(self, name: str) -> Any:
        return self.env.get_wrapper_attr(name)

    def set_attr(self, name: str, value: Any) -> None:
        self.env.set_wrapper_attr(name, value)

    def env_method(self, name: str, args: tuple, kwargs: dict[str, Any]) -> Any:
        return self.env.get_wrapper_attr(name)(*args, **kwargs)

    def is_wrapped(self, wrapper_class: type[gym.Wrapper]) -> bool:
        from stable_baselines3.common.env_util import is_wrapped

        return is_wrapped(self.env, wrapper_class)

    def close(self) -> None:
        self.env.close()


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as err:
        raise ConfigError('vec_env "ray" needs Ray: pip install "dus-gym[ray]"') from err
    return ray


class RayVecEnv(VecEnv):
    """N envs, each in a Ray actor; actions go out together and results come back together.

    Args:
        env_fns: one factory per env (pickled to the actors; e.g. ``partial(kinds.make_env, ...)``).
        config: cluster address and per-env resources.
    """

    def __init__(self, env_fns: Sequence[Callable[[], gym.Env]], config: RayVecEnvConfig | None = None) -> None:
        ray = _import_ray()
        self.config = config or RayVecEnvConfig()
        if not ray.is_initialized():
            ray.init(address=self.config.address, **self.config.init_kwargs)
        actor = ray.remote(_EnvWorker).options(num_cpus=self.config.num_cpus_per_env,
                                               num_gpus=self.config.num_gpus_per_env)
        self._ray = ray
        self.actors = [actor.remote(fn) for fn in env_fns]
        observation_space, action_space = ray.get([self.actors[0].get_attr.remote("observation_space"),
                                                   self.actors[0].get_attr.remote("action_space")])
        super().__init__(len(env_fns), observation_space, action_space)
        self._pending: list[Any] | None = None
        self.closed = False

    def reset(self) -> VecEnvObs:
        """Reset every actor's env with the pending seeds and options."""
        results = self._ray.get([a.reset.remote(self._seeds[i], self._options[i]) for i, a in enumerate(self.actors)])
        self._reset_seeds()
        self._reset_options()
        obs, self.reset_infos = zip(*results, strict=True)
        self.reset_infos = list(self.reset_infos)
        return np.stack(obs)

    def step_async(self, actions: np.ndarray) -> None:
        """Send every env its action (the actors start at once)."""
        self._pending = [a.step.remote(action) for a, action in zip(self.actors, actions, strict=True)]

    def step_wait(self) -> VecEnvStepReturn:
        """Gather the actors' results."""
        if self._pending is None:
            raise RuntimeError("call step_async(actions) before step_wait()")
        results = self._ray.get(self._pending)
        self._pending = None
        obs, rewards, dones, infos = [], [], [], []
        for i, (o, r, d, info, reset_info) in enumerate(results):
            obs.append(o)
            rewards.append(r)
            dones.append(d)
            infos.append(info)
            if reset_info is not None:
                self.reset_infos[i] = reset_info
        return np.stack(obs), np.asarray(rewards, dtype=np.float32), np.asarray(dones, dtype=bool), infos

    def close(self) -> None:
        """Close the envs and end the actors (the Ray runtime stays up for its owner)."""
        if self.closed:
            return
        self._ray.get([a.close.remote() for a in self.actors])
        for a in self.actors:
            self._ray.kill(a)
        self.closed = True

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """An attribute of each env (looked up through its wrappers)."""
        return self._ray.get([self.actors[i].get_attr.remote(attr_name) for i in self._get_indices(indices)])

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set an attribute of each env."""
        self._ray.get([self.actors[i].set_attr.remote(attr_name, value) for i in self._get_indices(indices)])

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        """Call a method of each env and return the results."""
        return self._ray.get([self.actors[i].env_method.remote(method_name, method_args, method_kwargs)
                              for i in self._get_indices(indices)])

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        """Whether each env is wrapped by ``wrapper_class`` (e.g. Monitor)."""
        return self._ray.get([self.actors[i].is_wrapped.remote(wrapper_class) for i in self._get_indices(indices)])
