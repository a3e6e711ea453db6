"""The spec files shipped with dus-gym (envs/, agents/) and how they are read."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from dus_gym.config import ConfigError

PACKAGE_ROOT = Path(__file__).resolve().parent
TRAINED_SAMPLERS = ("ppo",)
"""Samplers whose agents/<name>.yml holds training hyper-parameters, not sampler settings."""


def specs_dir(kind: str) -> Path:
    """Folder of the shipped specs: ``envs`` or ``agents`` (in the wheel, or the source checkout)."""
    packaged = PACKAGE_ROOT / "_specs" / kind
    return packaged if packaged.is_dir() else PACKAGE_ROOT.parent / kind


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping with the safe loader; one clear error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``update``, merging nested mappings key by key."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


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
