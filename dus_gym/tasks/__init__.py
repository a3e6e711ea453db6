"""Built-in tasks and the name -> builder table through which tasks are found."""

from __future__ import annotations

import functools
import importlib
import inspect
import json
from collections.abc import Callable
from typing import Any

from dus_gym.config import checked_kwargs, did_you_mean
from dus_gym.tasks.audiovisual import make_audiovisual
from dus_gym.tasks.base import MLPEncoder, MultimodalSplit, SmallCNNEncoder, Task
from dus_gym.tasks.mfeat import make_mfeat
from dus_gym.tasks.synthetic import make_synthetic

TaskBuilder = Callable[..., Task]

TASKS: dict[str, TaskBuilder] = {
    "mfeat": make_mfeat,
    "synthetic": make_synthetic,
    "cremad": functools.partial(make_audiovisual, "cremad"),
    "kinetics-sounds": functools.partial(make_audiovisual, "kinetics-sounds"),
}
"""Task name -> builder (a function of keyword arguments that returns a :class:`Task`)."""


def register_task(name: str, builder: TaskBuilder) -> None:
    """Make ``builder`` available under ``name`` (for ``make_task`` and run configs)."""
    if not callable(builder):
        raise TypeError(f"task builder for '{name}' must be callable, got {builder!r}")
    TASKS[name] = builder


def resolve_task_builder(name: str) -> TaskBuilder:
    """Find a builder by registered name, or by a ``"package.module:function"`` path."""
    if name in TASKS:
        return TASKS[name]
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            builder = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"cannot import task builder '{name}': {err}") from err
        if not callable(builder):
            raise ValueError(f"task builder '{name}' is not callable")
        return builder
    raise ValueError(f"unknown task '{name}'{did_you_mean(name, TASKS)}; known: {sorted(TASKS)}, "
                     "or give 'package.module:function'")


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


@functools.lru_cache(maxsize=8)
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
    "TASKS", "MLPEncoder", "MultimodalSplit", "SmallCNNEncoder", "Task", "make_mfeat", "make_synthetic",
    "cached_task", "make_task", "register_task", "resolve_task_builder",
]
