"""Many learners at once: the vectorised env, one process per env pinned to a device, and Ray actors.

``build_parallel_vec_env`` is what ``train_policy`` calls for ``vec_env`` "vectorized", "subproc"
and "ray":

- "vectorized": one :class:`dus_gym.vec_env.VecDUSEnv` (N learners in one batched computation);
- "subproc": SB3's ``SubprocVecEnv`` started with spawn, env i's learner on ``devices[i % len]``
  (by default every visible GPU in turn when the learner's device is "cuda" or "auto");
- "ray": :class:`dus_gym.ray_vec_env.RayVecEnv`, one Ray actor per env with its own CPU/GPU share.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import gymnasium as gym

from dus_gym.config import ConfigError
from dus_gym.registration import ENTRY_POINT
from dus_gym.specs import deep_merge

VEC_ENV_KINDS = ("dummy", "subproc", "vectorized", "ray")
"""The values of ``TrainPolicyConfig.vec_env``."""


def visible_gpus() -> list[str]:
    """``["cuda:0", "cuda:1", ...]`` for the GPUs this process sees (empty without CUDA)."""
    import torch

    return [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def assign_devices(n_envs: int, devices: Sequence[str]) -> list[str]:
    """Env i's learner device: ``devices[i % len(devices)]`` (round robin)."""
    if not devices:
        raise ConfigError("the device list is empty; give at least one device (e.g. cuda:0) or none at all")
    return [devices[i % len(devices)] for i in range(n_envs)]


def spec_kwargs(env_id: str, env_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The DUSEnv kwargs of a registered id with ``env_kwargs`` on top (nested mappings merged key by key)."""
    if env_id not in gym.registry:
        raise ConfigError(f"unknown env id '{env_id}'")
    spec = gym.registry[env_id]
    if spec.entry_point != ENTRY_POINT:
        raise ConfigError(f"env '{env_id}' is not a DUS env (entry point {spec.entry_point})")
    return deep_merge(dict(spec.kwargs), env_kwargs)


def env_devices(env_id: str, n_envs: int, env_kwargs: dict[str, Any], devices: Sequence[str] | None
                ) -> list[str | None]:
    """Per-env learner devices: ``devices`` round robin; None: visible GPUs for a cuda/auto learner, else unpinned."""
    if devices is not None:
        return list(assign_devices(n_envs, devices))
    wanted = spec_kwargs(env_id, env_kwargs)["learner"].get("device", "cpu")
    gpus = visible_gpus() if str(wanted) in ("cuda", "auto") else []
    return list(assign_devices(n_envs, gpus)) if gpus else [None] * n_envs


def make_pinned_env(env_id: str, rank: int, seed: int, env_kwargs: dict[str, Any], single_thread: bool,
                    device: str | None) -> gym.Env:
    """``train.make_env`` with the learner on ``device`` (and CUDA's current device set to it).

    The overrides of ``env_kwargs`` are merged into the spec's settings key by key (:func:`spec_kwargs`).
    """
    from dus_gym.train import make_env

    kwargs = spec_kwargs(env_id, env_kwargs)
    if device is not None:
        import torch

        if device.startswith("cuda") and torch.cuda.is_available():
            torch.cuda.set_device(torch.device(device))
        kwargs = deep_merge(kwargs, {"learner": {"device": device}})
    return make_env(env_id, rank, seed, kwargs, single_thread)


def build_parallel_vec_env(env_id: str, n_envs: int, seed: int, env_kwargs: dict[str, Any], kind: str,
                           devices: Sequence[str] | None = None, ray: dict[str, Any] | None = None) -> Any:
    """A monitored VecEnv of ``n_envs`` DUS envs of ``kind`` "subproc", "vectorized" or "ray".

    Args:
        env_id: a registered DUS env id.
        n_envs: number of envs (learners).
        seed: env i's first episode is seeded with ``seed + i``.
        env_kwargs: overrides of the env's registered kwargs.
        kind: "subproc", "vectorized" or "ray".
        devices: learner devices, round robin over the envs; None: for "subproc" see :func:`env_devices`, for
            "ray" the learner's own device (with ``num_gpus_per_env`` > 0, "cuda" is the actor's own GPU).
        ray: :class:`dus_gym.ray_vec_env.RayVecEnvConfig` fields (kind "ray").
    """
    from stable_baselines3.common.vec_env import SubprocVecEnv, VecMonitor

    if kind == "vectorized":
        from dus_gym.vec_env import VecDUSEnv

        if devices is not None:
            if len(set(devices)) > 1:
                raise ConfigError("the vectorised env runs its learners on one device; give one device or use "
                                  "vec_env 'subproc' or 'ray' for several")
            env_kwargs = deep_merge(env_kwargs, {"learner": {"device": devices[0]}})
        venv = VecDUSEnv(n_envs, seed=seed, **spec_kwargs(env_id, env_kwargs))
        return VecMonitor(venv, info_keywords=venv.info_keywords())
    if kind == "subproc":
        pinned = env_devices(env_id, n_envs, env_kwargs, devices)
        factories = [partial(make_pinned_env, env_id, i, seed, env_kwargs, True, pinned[i]) for i in range(n_envs)]
        return SubprocVecEnv(factories, start_method="spawn")
    if kind == "ray":
        from dus_gym.config import from_dict
        from dus_gym.ray_vec_env import RayVecEnv, RayVecEnvConfig

        config = from_dict(RayVecEnvConfig, ray or {}, "ray")
        # an actor with a GPU share sees only its own GPUs (Ray sets CUDA_VISIBLE_DEVICES): "cuda" is then right
        ray_devices = assign_devices(n_envs, devices) if devices is not None else [None] * n_envs
        factories = [partial(make_pinned_env, env_id, i, seed, env_kwargs, True, ray_devices[i])
                     for i in range(n_envs)]
        return RayVecEnv(factories, config)
    raise ConfigError(f"vec_env must be one of {list(VEC_ENV_KINDS)}, got '{kind}'")
