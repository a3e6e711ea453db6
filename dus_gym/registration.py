"""Registration of every env spec in envs/ (those with an ``env_id``) with Gymnasium."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import gymnasium as gym

from dus_gym.config import ConfigError, RunConfig, from_dict
from dus_gym.specs import read_yaml, specs_dir

ENTRY_POINT = "dus_gym.env:DUSEnv"


def env_kwargs(config: RunConfig) -> dict[str, Any]:
    """The DUSEnv keyword arguments of a run config (task, learner, CMD, budget, env settings)."""
    return {
        "task": config.task,
        "task_kwargs": dict(config.task_kwargs),
        "learner": dataclasses.asdict(config.learner),
        "cmd": dataclasses.asdict(config.cmd),
        "n_iterations": config.n_iterations,
        "epochs": config.epochs,
        **dataclasses.asdict(config.env),
    }


def register_spec(path: str | Path) -> str | None:
    """Register the env of one spec file; return its id (None when the spec has no ``env_id``).

    Raises:
        ConfigError: the spec is malformed or its id is not of the form ``[namespace/]Name-vN``.
    """
    path = Path(path)
    data = read_yaml(path)
    if not data.get("env_id"):
        return None
    try:
        config = from_dict(RunConfig, data)
    except ConfigError as err:
        raise ConfigError(f"env spec {path}: {err}") from err
    env_id = config.env_id
    try:
        gym.envs.registration.parse_env_id(env_id)
    except gym.error.Error as err:
        raise ConfigError(f"env spec {path}: env_id '{env_id}' is malformed ({err}); use e.g. dus_gym/Name-v0") from err
    if "-v" not in env_id:
        raise ConfigError(f"env spec {path}: env_id '{env_id}' needs a version suffix such as -v0")
    existing = gym.registry.get(env_id)
    kwargs = env_kwargs(config)
    if existing is not None and existing.entry_point == ENTRY_POINT and existing.kwargs == kwargs:
        return env_id
    gym.register(
        id=env_id,
        entry_point=ENTRY_POINT,
        kwargs=kwargs,
        nondeterministic=config.learner.device != "cpu",  # cuDNN/cuBLAS kernels are not bit-reproducible
        disable_env_checker=False,
    )
    return env_id


def register_envs(folder: str | Path | None = None) -> list[str]:
    """Register every spec ``*.yaml`` of ``folder`` (default: the shipped envs/); return the ids."""
    folder = Path(folder) if folder is not None else specs_dir("envs")
    if not folder.is_dir():
        raise ConfigError(f"env spec folder not found: {folder}")
    ids = [register_spec(path) for path in sorted(folder.glob("*.yaml"))]
    return [i for i in ids if i is not None]
