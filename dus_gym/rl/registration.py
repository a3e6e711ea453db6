"""Env ids and spec files: registration with Gymnasium, and the spec + overrides -> env kwargs resolution.

An env spec (``envs/<task>.yaml``) is a run-config mapping with an ``env_id``. Every DUS env is
registered with the entry point :func:`dus_gym.rl.env.make_spec_env` and the kwargs
``{"spec": <file>}``: as with Gymnasium's own envs, registering reads nothing, and the spec file
is read and checked when the env is made. The overrides given to ``gymnasium.make(id, **kwargs)``
(any ``DUSEnv`` argument) are merged into the spec key by key, so ``learner={"lr": 0.1}`` changes
the learning rate and keeps the spec's other learner settings.

The shipped specs are registered on ``import dus_gym`` from :data:`SHIPPED_ENVS`; a folder of a
user's specs with :func:`register_envs` (which does read and check them, so that a bad spec fails
at once).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym

from dus_gym.core.config import ConfigError, EnvConfig, RunConfig, did_you_mean, from_dict
from dus_gym.core.files import read_yaml
from dus_gym.core.specs import deep_merge, specs_dir

ENTRY_POINT = "dus_gym.rl.env:make_spec_env"
"""The entry point of every DUS env id."""
ENV_ARGUMENTS = ("task", "task_kwargs", "learner", "cmd", "n_iterations", "epochs", "family")
"""DUSEnv's own run-config arguments; its other keyword arguments (but ``render_mode``) are EnvConfig fields."""


@dataclass(frozen=True)
class ShippedEnv:
    """A spec file shipped in envs/ and what its registration needs to know without reading it."""

    spec: str
    """File name in envs/."""
    nondeterministic: bool = False
    """The spec's learner may run on a GPU (cuDNN and cuBLAS kernels are not bit-reproducible)."""


SHIPPED_ENVS: dict[str, ShippedEnv] = {
    "dus_gym/Synthetic-v0": ShippedEnv("synthetic.yaml"),
    "dus_gym/MFeat-v0": ShippedEnv("mfeat.yaml"),
    "dus_gym/CremaD-v0": ShippedEnv("cremad.yaml", nondeterministic=True),
    "dus_gym/KineticsSounds-v0": ShippedEnv("kinetics-sounds.yaml", nondeterministic=True),
    "dus_gym/SyntheticFamily-v0": ShippedEnv("synthetic-family.yaml"),
    "dus_gym/MFeatFamily-v0": ShippedEnv("mfeat-family.yaml"),
}
"""The registered ids of the shipped specs (a test checks that this table matches the files)."""


def spec_path(spec: str | Path) -> Path:
    """A spec file: a path, or the name of a shipped spec in envs/."""
    path = Path(spec)
    return path if path.is_absolute() or path.parent != Path() else specs_dir("envs") / path


def env_kwargs_of(config: RunConfig) -> dict[str, Any]:
    """The DUSEnv keyword arguments of a run config (task, learner, CMD, budget, env settings)."""
    return {
        "task": config.task,
        "task_kwargs": dict(config.task_kwargs),
        "learner": dataclasses.asdict(config.learner),
        "cmd": dataclasses.asdict(config.cmd),
        "n_iterations": config.n_iterations,
        "epochs": config.epochs,
        "family": dataclasses.asdict(config.family) if config.family is not None else None,
        **dataclasses.asdict(config.env),
    }


def run_mapping(kwargs: dict[str, Any], where: str) -> dict[str, Any]:
    """DUSEnv keyword arguments as a run-config mapping (env settings under ``env``); unknown keys are errors."""
    valid = [*ENV_ARGUMENTS, *(f.name for f in dataclasses.fields(EnvConfig))]
    mapping: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key not in valid:
            hint = did_you_mean(str(key), valid) or f" (valid keys: {valid})"
            raise ConfigError(f"unknown env kwarg '{key}' for {where}{hint}")
        if key in ENV_ARGUMENTS:
            mapping[key] = value
        else:
            mapping.setdefault("env", {})[key] = value
    return mapping


def spec_config(spec: str | Path, overrides: dict[str, Any], where: str, run_dir: str | None = None) -> RunConfig:
    """The run config of a spec file with DUSEnv-style ``overrides`` merged in key by key (types checked)."""
    path = spec_path(spec)
    data = read_yaml(path)
    data = deep_merge(data, run_mapping(overrides, where))
    if run_dir is not None:
        data["run_dir"] = str(run_dir)
    try:
        return from_dict(RunConfig, data)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from err


def registry_spec(env_id: str) -> Path:
    """The spec file a registered DUS env id was made from."""
    return spec_path(_dus_spec(env_id))


def _dus_spec(env_id: str) -> str:
    if env_id not in gym.registry:
        ours = sorted(i for i in gym.registry if i.startswith("dus_gym/"))
        raise ConfigError(f"unknown env id '{env_id}'{did_you_mean(env_id, ours)}; registered: {ours}")
    spec = gym.registry[env_id]
    if spec.entry_point != ENTRY_POINT or "spec" not in spec.kwargs:
        raise ConfigError(f"env '{env_id}' is not a DUS env (entry point {spec.entry_point})")
    return spec.kwargs["spec"]


def spec_kwargs(env_id: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The DUSEnv kwargs of a registered id with ``overrides`` on top (nested mappings merged key by key)."""
    return env_kwargs_of(spec_config(_dus_spec(env_id), overrides, env_id))


def env_run_config(env_id: str, overrides: dict[str, Any], run_dir: str | Path) -> RunConfig:
    """The run config of a registered DUS env with ``overrides`` (for ``dus-gym run``-style runs of its task)."""
    return spec_config(_dus_spec(env_id), overrides, env_id, run_dir=str(run_dir))


def _register(env_id: str, spec: str, nondeterministic: bool) -> None:
    existing = gym.registry.get(env_id)
    kwargs = {"spec": spec}
    if existing is not None and existing.entry_point == ENTRY_POINT and existing.kwargs == kwargs:
        return
    gym.register(id=env_id, entry_point=ENTRY_POINT, kwargs=kwargs, nondeterministic=nondeterministic,
                 disable_env_checker=False)


def register_spec(path: str | Path) -> str | None:
    """Read, check and register the env of one spec file; return its id (None when it has no ``env_id``).

    Raises:
        ConfigError: the spec is malformed or its id is not of the form ``[namespace/]Name-vN``.
    """
    path = Path(path).resolve()
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
    _register(env_id, str(path), nondeterministic=config.learner.device != "cpu")
    return env_id


def register_envs(folder: str | Path | None = None) -> list[str]:
    """Register the specs ``*.yaml`` of ``folder`` (read and checked now); None: the shipped ones (nothing read).

    Returns the registered ids.
    """
    if folder is None:
        for env_id, shipped in SHIPPED_ENVS.items():
            _register(env_id, shipped.spec, shipped.nondeterministic)
        return list(SHIPPED_ENVS)
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"env spec folder not found: {folder}")
    ids = [register_spec(path) for path in sorted(folder.glob("*.yaml"))]
    return [i for i in ids if i is not None]
