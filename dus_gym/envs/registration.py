"""Env ids and spec files: registration with Gymnasium, and the spec + overrides -> env kwargs resolution.

An env spec (``envs/<task>.yaml``) is a run-config mapping with an ``env_id``. Every DUS env is
registered with the entry point :func:`dus_gym.envs.env.make_spec_env` and the kwargs
``{"spec": <file>}``: as with Gymnasium's own envs, registering reads nothing, and the spec file
is read and checked when the env is made. The overrides given to ``gymnasium.make(id, **kwargs)``
(any ``DUSEnv`` argument) are merged into the spec key by key, so ``learner={"lr": 0.1}`` changes
the learning rate and keeps the spec's other learner settings. A ``task`` override replaces the
spec's task with its ``task_kwargs`` (which belong to that task): ``gymnasium.make("dus_gym/Synthetic-v0",
task="mytasks:make_task")`` runs the user's task under the spec's learner, budget and env settings,
with ``task_kwargs`` given beside it if it takes any.

The shipped specs are registered on ``import dus_gym`` from :data:`SHIPPED_ENVS`; a folder of a
user's specs with :func:`register_envs`, which reads and checks them: a malformed spec is reported
(a warning) and skipped, the others are registered. A user's spec is a file read from disk: it may
name a ``module:function`` task only when registered with ``allow_task_import=True``
(:func:`dus_gym.tasks.check_task_source`).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym

from dus_gym.core.config import ConfigError, EnvConfig, RunConfig, did_you_mean, from_dict
from dus_gym.core.files import read_yaml
from dus_gym.core.specs import deep_merge, specs_dir

ENTRY_POINT = "dus_gym.envs.env:make_spec_env"
"""The entry point of every DUS env id."""
VECTOR_ENTRY_POINT = "dus_gym.envs.vector.gymnasium_vector_env:make_spec_vector_env"
"""The vector entry point (``gymnasium.make_vec``) of every DUS id whose learners can be batched."""
ENV_ARGUMENTS = ("task", "task_kwargs", "learner", "cmd", "n_iterations", "epochs", "family")
"""DUSEnv's own run-config arguments; its other keyword arguments (but ``render_mode``) are EnvConfig fields."""


@dataclass(frozen=True)
class ShippedEnv:
    """A spec file shipped in envs/ and what its registration needs to know without reading it."""

    spec: str
    """File name in envs/."""
    nondeterministic: bool = False
    """The spec's learner may run on a GPU (cuDNN and cuBLAS kernels are not bit-reproducible)."""
    batchable: bool = True
    """Its learners can be batched (in-memory data): ``gymnasium.make_vec`` gets :data:`VECTOR_ENTRY_POINT`;
    otherwise make_vec runs N separate envs (``vectorization_mode="sync"``)."""


SHIPPED_ENVS: dict[str, ShippedEnv] = {
    "dus_gym/Synthetic-v0": ShippedEnv("synthetic.yaml"),
    "dus_gym/MFeat-v0": ShippedEnv("mfeat.yaml"),
    "dus_gym/CremaD-v0": ShippedEnv("cremad.yaml", nondeterministic=True, batchable=False),
    "dus_gym/KineticsSounds-v0": ShippedEnv("kinetics-sounds.yaml", nondeterministic=True, batchable=False),
    "dus_gym/Twitter2015-v0": ShippedEnv("twitter2015.yaml", nondeterministic=True, batchable=False),
    "dus_gym/Sarcasm-v0": ShippedEnv("sarcasm.yaml", nondeterministic=True, batchable=False),
    "dus_gym/NVGesture-v0": ShippedEnv("nvgesture.yaml", nondeterministic=True, batchable=False),
    "dus_gym/SyntheticFamily-v0": ShippedEnv("synthetic-family.yaml"),
    "dus_gym/SyntheticFamily-v1": ShippedEnv("synthetic-family-v1.yaml"),
    "dus_gym/SyntheticFamilyOOD-v0": ShippedEnv("synthetic-family-ood.yaml"),
    "dus_gym/MFeatFamily-v1": ShippedEnv("mfeat-family.yaml"),
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


def _check_task_source(data: Any, source: str, allow_task_import: bool, task: bool = True) -> None:
    """:func:`dus_gym.tasks.check_spec_sources`, imported when a spec is read (``import dus_gym`` needs no torch)."""
    from dus_gym.tasks import check_spec_sources

    check_spec_sources(data, source, allow_task_import, task=task)


def _check_task_name(name: Any, source: str) -> None:
    """:func:`dus_gym.tasks.check_task_name`, imported when a user's spec is registered."""
    from dus_gym.tasks import check_task_name

    check_task_name(name, source)


def is_shipped(path: Path) -> bool:
    """True for a spec shipped with dus-gym (trusted like its code)."""
    return Path(path).resolve().parent == specs_dir("envs").resolve()


def spec_config(spec: str | Path, overrides: dict[str, Any], where: str, run_dir: str | None = None,
                allow_task_import: bool = False) -> RunConfig:
    """The run config of a spec file with DUSEnv-style ``overrides`` merged in key by key (types checked).

    A user's spec may name a ``module:function`` task only with ``allow_task_import`` (the overrides,
    given in Python or on the command line, may).
    """
    path = spec_path(spec)
    data = read_yaml(path)
    if not is_shipped(path):  # its task unless the overrides name one; its family generator always
        _check_task_source(data, f"the env spec {path}", allow_task_import, task="task" not in overrides)
    if "task" in overrides and overrides["task"] != data.get("task"):
        data = {k: v for k, v in data.items() if k != "task_kwargs"}  # the spec's task settings go with its task
    data = deep_merge(data, run_mapping(overrides, where))
    if run_dir is not None:
        data["run_dir"] = str(run_dir)
    try:
        return from_dict(RunConfig, data)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from err


def registry_spec(env_id: str) -> Path:
    """The spec file a registered DUS env id was made from."""
    return spec_path(_dus_spec(env_id)[0])


def _dus_spec(env_id: str) -> tuple[str, bool]:
    """The spec file of a registered DUS id and whether it may import its task."""
    if env_id not in gym.registry:
        ours = sorted(i for i in gym.registry if i.startswith("dus_gym/"))
        raise ConfigError(f"unknown env id '{env_id}'{did_you_mean(env_id, ours)}; registered: {ours}")
    spec = gym.registry[env_id]
    if spec.entry_point != ENTRY_POINT or "spec" not in spec.kwargs:
        raise ConfigError(f"env '{env_id}' is not a DUS env (entry point {spec.entry_point})")
    return spec.kwargs["spec"], bool(spec.kwargs.get("allow_task_import", False))


def spec_kwargs(env_id: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The DUSEnv kwargs of a registered id with ``overrides`` on top (nested mappings merged key by key)."""
    spec, allow = _dus_spec(env_id)
    return env_kwargs_of(spec_config(spec, overrides, env_id, allow_task_import=allow))


def env_run_config(env_id: str, overrides: dict[str, Any], run_dir: str | Path) -> RunConfig:
    """The run config of a registered DUS env with ``overrides`` (for ``dus-gym run``-style runs of its task)."""
    spec, allow = _dus_spec(env_id)
    return spec_config(spec, overrides, env_id, run_dir=str(run_dir), allow_task_import=allow)


def _register(env_id: str, spec: str, nondeterministic: bool, allow_task_import: bool = False,
              batchable: bool = True) -> None:
    existing = gym.registry.get(env_id)
    kwargs: dict[str, Any] = {"spec": spec, **({"allow_task_import": True} if allow_task_import else {})}
    vector_entry_point = VECTOR_ENTRY_POINT if batchable else None
    if (existing is not None and existing.entry_point == ENTRY_POINT and existing.kwargs == kwargs
            and existing.vector_entry_point == vector_entry_point):
        return
    gym.register(id=env_id, entry_point=ENTRY_POINT, vector_entry_point=vector_entry_point, kwargs=kwargs,
                 nondeterministic=nondeterministic, disable_env_checker=False)


def register_spec(path: str | Path, allow_task_import: bool = False) -> str | None:
    """Read, check and register the env of one spec file; return its id (None when it has no ``env_id``).

    Args:
        path: the spec file.
        allow_task_import: let the spec name a ``module:function`` task (it is then imported when the env is made).

    Raises:
        ConfigError: the spec is malformed, names an unknown task or a ``module:function`` task without
            ``allow_task_import``, or its id is not of the form ``[namespace/]Name-vN``.
    """
    path = Path(path).resolve()
    data = read_yaml(path)
    if not data.get("env_id"):
        return None
    _check_task_source(data, f"the env spec {path}", allow_task_import)
    _check_task_name(data.get("task"), f"env spec {path}")
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
    _register(env_id, str(path), nondeterministic=config.learner.device != "cpu", allow_task_import=allow_task_import)
    return env_id


def register_envs(folder: str | Path | None = None, allow_task_import: bool = False) -> list[str]:
    """Register the specs ``*.yaml`` of ``folder`` (read and checked now); None: the shipped ones (nothing read).

    A spec that cannot be registered (malformed, a bad id, a ``module:function`` task without
    ``allow_task_import``) is reported with a warning and skipped; the others are registered.

    Args:
        folder: a folder of the user's specs (keep them outside the installed package).
        allow_task_import: let these specs name ``module:function`` tasks (trust their folder).

    Returns:
        The registered ids.
    """
    if folder is None:
        for env_id, shipped in SHIPPED_ENVS.items():
            _register(env_id, shipped.spec, shipped.nondeterministic, batchable=shipped.batchable)
        return list(SHIPPED_ENVS)
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"env spec folder not found: {folder}")
    ids = []
    for path in sorted(folder.glob("*.yaml")):
        try:
            env_id = register_spec(path, allow_task_import)
        except (ConfigError, OSError) as err:
            warnings.warn(f"env spec {path} skipped: {err}", stacklevel=2)
            continue
        if env_id is not None:
            ids.append(env_id)
    return ids
