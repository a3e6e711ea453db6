"""Tasks: the data and encoders a learner trains on, found by name through one table.

Built in: ``synthetic`` and ``mfeat`` (no download); ``cremad``, ``kinetics-sounds``, ``twitter2015``,
``sarcasm`` and ``nvgesture`` (data prepared with ``dus-gym prepare``). A user's own task is a
function returning a :class:`Task`, found in one of three ways, the trust boundary of task code:

1. registered under a short name from Python with :func:`register_task`;
2. an installed package's entry point in the ``dus_gym.tasks`` group (the standard plug-in
   mechanism: installing the package is the act of trust), e.g. in its pyproject.toml
   ``[project.entry-points."dus_gym.tasks"] mytask = "mytasks:make_mytask"``;
3. a ``"package.module:function"`` path, which imports that module and calls that function:
   accepted when it comes from the command line or from Python, and from a file read from disk
   (a config, a task spec, a run folder, an env spec, a bench config, agents/ppo.yml, a resumed
   policy run's args.yml) only when the user opts in on the command line (``--allow-task-import``;
   :func:`check_task_source`). A family's ``generator`` follows the same rule (:func:`check_spec_sources`).

Whatever the source, a builder must be a Python callable (a built-in such as ``os:system`` is
refused before it is called) and must return a :class:`Task`.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from dus_gym.core.config import MAX_SHOWN, ConfigError, checked_kwargs, did_you_mean, shown
from dus_gym.core.registry import Registry, load_entry_point
from dus_gym.core.task import MLPEncoder, MultimodalSplit, SmallCNNEncoder, Task

logger = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "dus_gym.tasks"
"""The entry-point group through which installed packages provide tasks."""
OPT_IN = "--allow-task-import"
"""The command-line flag that lets a file name a task as "module:function"."""

TaskBuilder = Callable[..., Task]

TASKS: Registry[TaskBuilder] = Registry("task", {
    "mfeat": "dus_gym.tasks.mfeat:make_mfeat",
    "synthetic": "dus_gym.tasks.synthetic:make_synthetic",
    "cremad": "dus_gym.tasks.audiovisual.clips:make_cremad",
    "kinetics-sounds": "dus_gym.tasks.audiovisual.clips:make_kinetics_sounds",
    "twitter2015": "dus_gym.tasks.imagetext.data:make_twitter2015",
    "sarcasm": "dus_gym.tasks.imagetext.data:make_sarcasm",
    "nvgesture": "dus_gym.tasks.gesture.clips:make_nvgesture",
})
"""Task name -> builder (a function of keyword arguments that returns a :class:`Task`), or "module:function"."""

FAMILIES: Registry[Callable[..., list[dict[str, Any]]]] = Registry("family", {
    "synthetic": "dus_gym.tasks.families:synthetic_family",
    "mfeat": "dus_gym.tasks.families:mfeat_family",
})
"""Task-family name -> generator (keyword arguments -> list of task-kwargs overrides; :mod:`dus_gym.tasks.families`)."""


def register_task(name: str, builder: TaskBuilder | str) -> None:
    """Make ``builder`` (a function, or ``"module:function"``) available under ``name``."""
    TASKS.register(name, builder)


@functools.lru_cache(maxsize=1)
def entry_point_tasks() -> dict[str, str]:
    """Tasks of installed packages: name -> ``"module:attr"`` of the ``dus_gym.tasks`` entry points.

    A name that is already a built-in task is not replaced (a warning says so).
    """
    found = {}
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in TASKS:
            logger.warning("entry point '%s = %s' of group %s is ignored: '%s' is a registered task",
                           entry.name, entry.value, ENTRY_POINT_GROUP, entry.name)
            continue
        found[entry.name] = entry.value
    return found


def is_import_path(name: str) -> bool:
    """True when ``name`` is a ``"module:function"`` path, not a registered or installed task."""
    return ":" in name and name not in TASKS and name not in entry_point_tasks()


def check_task_source(name: Any, source: str, allow_import: bool = False) -> None:
    """Refuse a ``"module:function"`` task named by a file read from disk, unless the user opted in.

    Args:
        name: the task named by the file.
        source: what the file is and where (e.g. "the config file runs/x/config.yaml"), for the message.
        allow_import: the user's opt-in (:data:`OPT_IN`).

    Raises:
        ConfigError: ``name`` is a ``module:function`` path and ``allow_import`` is False.
    """
    if isinstance(name, str) and is_import_path(name) and not allow_import:
        raise ConfigError(
            f"{source} names the task '{name[:MAX_SHOWN]}', which would import and run that code; a file may name "
            f"only registered or installed tasks ({', '.join(sorted([*TASKS.names(), *entry_point_tasks()]))}). "
            f"Give it on the command line (--task {name[:MAX_SHOWN]}) or pass {OPT_IN} if you trust the file")


def check_task_name(name: Any, source: str) -> None:
    """Raise a ConfigError unless ``name`` is a registered or installed task, or a ``module:function`` path.

    Used when a user's spec is registered, so that a misspelt task fails there, not when the env is made.
    """
    if not isinstance(name, str) or is_import_path(name) or name in TASKS or name in entry_point_tasks():
        return
    known = sorted([*TASKS.names(), *entry_point_tasks()])
    raise ConfigError(f"{source} names the unknown task '{name[:MAX_SHOWN]}'{did_you_mean(name, known)}; "
                      f"known tasks: {', '.join(known)}, or give 'package.module:function'")


def check_spec_sources(data: Any, source: str, allow_import: bool = False, task: bool = True) -> None:
    """:func:`check_task_source` for every code path a run mapping can name: its ``task`` and its family's generator.

    ``task=False``: the task is given elsewhere (the command line), so only the generator is checked.
    """
    if not isinstance(data, dict):
        return
    if task:
        check_task_source(data.get("task"), source, allow_import)
    family = data.get("family")
    generator = family.get("generator") if isinstance(family, dict) else None
    if isinstance(generator, str) and ":" in generator and not allow_import:
        if generator not in FAMILIES:
            raise ConfigError(
                f"{source} names the family generator '{generator[:MAX_SHOWN]}' (family.generator), which would "
                f"import and run that code; a file may name only the built-in generators "
                f"({', '.join(FAMILIES.names())}). Pass {OPT_IN} if you trust the file")


@contextmanager
def _working_folder_importable() -> Iterator[None]:
    """While importing a user's module: the working folder at the end of sys.path (after installed packages)."""
    cwd = str(Path.cwd())
    added = "" not in sys.path and cwd not in sys.path
    if added:
        sys.path.append(cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def resolve_task_builder(name: str) -> TaskBuilder:
    """Find a builder: a registered name, an installed package's entry point, or ``"package.module:function"``.

    A ``module:function`` path is imported with the working folder searched last (after the
    installed packages), so a user's ``mytasks.py`` beside them is found and cannot shadow a library.
    """
    if name in TASKS:
        return _checked_builder(name, TASKS.get(name))
    installed = entry_point_tasks()
    if name in installed:
        TASKS.register(name, installed[name])
        return _checked_builder(name, TASKS.get(name))
    if ":" in name:
        with _working_folder_importable():
            try:
                builder = load_entry_point(name)
            except ConfigError as err:
                raise ValueError(f"cannot import task builder '{name}': {err}") from err
        return _checked_builder(name, builder)
    raise TASKS.unknown(name, ", or give 'package.module:function'")


def _checked_builder(name: str, builder: Any) -> TaskBuilder:
    """``builder`` if it can be a task builder: a Python callable, not a built-in (``os:system``)."""
    if not callable(builder):
        raise ValueError(f"task builder '{name}' is not callable")
    if inspect.isbuiltin(builder) or isinstance(builder, type) and not issubclass(builder, Task):
        raise ValueError(f"task builder '{name}' is {shown(builder)}, not a function that returns a "
                         "dus_gym.tasks.Task")
    return builder


def make_task(name: str, **kwargs: Any) -> Task:
    """Build the task ``name`` with keyword arguments ``kwargs``.

    Raises:
        ValueError: an unknown task, bad arguments, a builder that fails (its exception is chained)
            or that returns something other than a :class:`Task`.
    """
    builder = resolve_task_builder(name)
    try:
        kwargs = checked_kwargs(builder, kwargs, "task_kwargs")
    except ValueError as err:
        raise ValueError(f"bad arguments for task '{name}': {err}") from err
    try:
        inspect.signature(builder).bind(**kwargs)
    except TypeError as err:
        raise ValueError(f"bad arguments for task '{name}': {err}") from err
    except ValueError:  # no signature to check (a C callable): the call below tells
        pass
    try:
        task = builder(**kwargs)
    except (ValueError, OSError):  # the built-in builders' own one-line errors
        raise
    except Exception as err:  # a user's builder: name the task, keep the cause chained
        raise ValueError(f"task builder '{name}' failed: {type(err).__name__}: {str(err)[:MAX_SHOWN]}") from err
    if not isinstance(task, Task):
        raise ValueError(f"task builder '{name}' returned {type(task).__name__}, not a dus_gym.tasks.Task")
    return task


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
    "ENTRY_POINT_GROUP", "OPT_IN", "TASKS", "MLPEncoder", "MultimodalSplit", "SmallCNNEncoder", "Task", "TaskBuilder",
    "cached_task", "check_task_source", "entry_point_tasks", "is_import_path", "make_task", "register_task",
    "resolve_task_builder",
]
