"""The spec files shipped with dus-gym (envs/, agents/) and the one resolver of run configurations.

A run configuration is built from layers, later wins (:func:`resolve_run_config`):

1. the :class:`~dus_gym.core.config.RunConfig` defaults;
2. the task spec ``envs/<task>.yaml`` (task kwargs, learner settings, budget, env settings; its own
   ``task`` key names the task builder, e.g. ``synthetic-family.yaml`` builds ``synthetic``);
3. a config file (any ``RunConfig`` keys);
4. the sampler settings ``agents/<sampler>.yml`` (top-level key: the task name, else ``default``,
   as in the RL Zoo), unless the config file sets ``sampler_kwargs`` itself;
5. the method's preset (``--preset authors``: its authors' optimiser, lr, schedule and keywords, from
   ``dus_gym/core/methods/presets.yaml``; ``common``, the default, adds nothing);
6. flags (task, sampler, seed, budget, device, method, run folder);
7. ``key.sub=value`` overrides (:func:`parse_override`).

``dus-gym run``, ``compare`` and ``bench`` resolve through it; the env side
(:mod:`dus_gym.envs.registration`) reads the same spec files and merges its overrides the same way.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from dus_gym.core.config import ConfigError, RunConfig
from dus_gym.core.files import read_yaml

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
TRAINED_SAMPLERS = ("ppo",)
"""Samplers whose agents/<name>.yml holds training hyper-parameters, not sampler settings."""


def specs_dir(kind: str) -> Path:
    """Folder of the shipped specs: ``envs`` or ``agents`` (in the wheel, or the source checkout)."""
    packaged = PACKAGE_ROOT / "_specs" / kind
    return packaged if packaged.is_dir() else PACKAGE_ROOT.parent / kind


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``update``, merging nested mappings key by key (neither is modified)."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_override(text: str) -> dict[str, Any]:
    """``"learner.lr=0.1"`` -> ``{"learner": {"lr": 0.1}}`` (the value is read as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override '{text}' must look like key=value (e.g. learner.lr=0.1)")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"override '{text}': the value is not valid YAML") from err
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def parse_overrides(texts: list[str] | None) -> dict[str, Any]:
    """Several ``key=value`` overrides merged into one mapping (later ones win)."""
    merged: dict[str, Any] = {}
    for text in texts or []:
        merged = deep_merge(merged, parse_override(text))
    return merged


def task_spec_path(task: str) -> Path:
    """The spec of ``task``: a ``.yaml`` path as given, else the shipped ``envs/<task>.yaml`` (which may not exist)."""
    if task.endswith((".yaml", ".yml")):
        return Path(task)
    return specs_dir("envs") / f"{task}.yaml"


def sampler_settings(sampler: str, task: str) -> dict[str, Any]:
    """Keyword arguments of ``sampler`` for ``task`` from ``agents/<sampler>.yml`` (or {})."""
    path = specs_dir("agents") / f"{sampler}.yml"
    if sampler in TRAINED_SAMPLERS or not path.is_file():
        return {}
    table = read_yaml(path)
    settings = table.get(task, table.get("default", {}))
    if not isinstance(settings, dict):
        raise ConfigError(f"{path}: the entry for '{task}' must be a mapping")
    return settings


def resolve_run_config(
    task: str | None = None,
    *,
    config: dict[str, Any] | None = None,
    sampler: str | None = None,
    flags: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    preset: str = "common",
) -> dict[str, Any]:
    """The run-config mapping of the layers listed in the module docstring (later wins).

    Args:
        task: the task (its spec in envs/ is the base); None: from the overrides, the config, or the default.
        config: a config file's mapping.
        sampler: the sampler (its settings in agents/ are used); None: from the overrides or the layers below.
        flags: run-config keys set by flags (e.g. ``{"seed": 3, "learner": {"device": "cuda"}}``).
        overrides: ``key=value`` overrides (:func:`parse_overrides`), applied last.
        preset: ``common`` or ``authors`` (:mod:`dus_gym.core.methods.presets`), read for the method and the
            budget of the resolved config (flags and overrides included), applied under the flags.
    """
    user, flags, overrides = config or {}, flags or {}, overrides or {}
    task = task or overrides.get("task") or user.get("task") or RunConfig.task
    spec = task_spec_path(task)
    spec_data = read_yaml(spec) if spec.is_file() else {}
    data = deep_merge(spec_data, user)
    data["task"] = spec_data.get("task", task)  # a spec may name another builder (synthetic-family: synthetic)
    data["sampler"] = sampler or overrides.get("sampler") or data.get("sampler", RunConfig.sampler)
    if "sampler_kwargs" not in user:
        data["sampler_kwargs"] = sampler_settings(data["sampler"], task)
    resolved = deep_merge(deep_merge(data, flags), overrides)
    from dus_gym.core.methods.presets import preset_layer  # the methods import torch: only when resolving

    layer = preset_layer(preset, resolved, deep_merge(flags, overrides))
    if not layer:
        return resolved
    return deep_merge(deep_merge(deep_merge(data, layer), flags), overrides)
