"""Tasks: the data and encoders a learner trains on, found by name through one table.

Built in: ``synthetic`` and ``mfeat`` (no download), ``cremad`` and ``kinetics-sounds`` (data
prepared with ``dus-gym prepare``). A user's own task is a function returning a :class:`Task`,
given as ``"package.module:function"`` or registered under a short name with :func:`register_task`.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable
from typing import Any

from dus_gym.core.config import ConfigError, checked_kwargs
from dus_gym.core.registry import Registry, load_entry_point
from dus_gym.tasks.base import MLPEncoder, MultimodalSplit, SmallCNNEncoder, Task

TaskBuilder = Callable[..., Task]

TASKS: Registry[TaskBuilder] = Registry("task", {
    "mfeat": "dus_gym.tasks.mfeat:make_mfeat",
    "synthetic": "dus_gym.tasks.synthetic:make_synthetic",
    "cremad": "dus_gym.tasks.audiovisual.clips:make_cremad",
    "kinetics-sounds": "dus_gym.tasks.audiovisual.clips:make_kinetics_sounds",
})
"""Task name -> builder (a function of keyword arguments that returns a :class:`Task`), or "module:function"."""


def register_task(name: str, builder: TaskBuilder | str) -> None:
    """Make ``builder`` (a function, or ``"module:function"``) available under ``name``."""
    TASKS.register(name, builder)


def resolve_task_builder(name: str) -> TaskBuilder:
    """Find a builder by registered name, or by a ``"package.module:function"`` path."""
    if name in TASKS:
        return TASKS.get(name)
    if ":" in name:
        try:
            builder = load_entry_point(name)
        except ConfigError as err:
            raise ValueError(f"cannot import task builder '{name}': {err}") from err
        if not callable(builder):
            raise ValueError(f"task builder '{name}' is not callable")
        return builder
    raise TASKS.unknown(name, ", or give 'package.module:function'")


def make_task(name: str, **kwargs: Any) -> Task:
    """Build the task ``name`` with keyword arguments ``kwargs``."""
    builder = resolve_task_builder(name)
    try:
        kwargs = checked_kwargs(builder, kwargs, "task_kwargs")
    except ValueError as err:
        raise ValueError(f"bad arguments for task '{name}': {err}") from err
    try:
        inspect.signature(builder).bind(**kwargs)
    except TypeError as err:
        raise ValueError(f"bad arguments for task '{name}': {err}") from err
    return builder(**kwargs)


@functools.lru_cache(maxsize=64)
def _cached_task(name: str, frozen_kwargs: str) -> Task:
    return make_task(name, **json.loads(frozen_kwargs))


def cached_task(name: str, **kwargs: Any) -> Task:
    """Like :func:`make_task`, but built once per process for the same name and kwargs.

    Tasks are immutable, so the envs and runs of one process share one copy of the data.
    """
    try:
        key = json.dumps(kwargs, sort_keys=True)
    except TypeError:  # kwargs that are not JSON (objects): no sharing
        return make_task(name, **kwargs)
    return _cached_task(name, key)


__all__ = [
    "TASKS", "MLPEncoder", "MultimodalSplit", "SmallCNNEncoder", "Task", "TaskBuilder", "cached_task", "make_task",
    "register_task", "resolve_task_builder",
]
