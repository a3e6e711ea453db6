"""Presets of the balancing methods: which optimiser, lr, schedule and keywords a run takes.

``common`` is the project's recipe: the task spec's learner and the methods' defaults, the same for every
method. ``authors`` is each method's values from its authors' script, read from the data file
``presets.yaml`` next to this module (see docs/bench.md, "Presets"). A preset is a layer of the run
config: it goes over the task spec and the config file, under the flags and the ``--set`` overrides,
so an explicit value always wins (:func:`dus_gym.core.specs.resolve_run_config` applies it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from dus_gym.core.config import ConfigError, LearnerConfig, RunConfig, did_you_mean, shown
from dus_gym.core.files import read_yaml

PRESETS = ("common", "authors")
"""The presets a run or a bench can take (``--preset``); ``common`` is the default."""
PRESET_FILE = Path(__file__).with_name("presets.yaml")
"""The ``authors`` presets, one entry per registered method."""
LEARNER_KEYS = ("optimizer", "lr", "momentum", "weight_decay")
"""The learner settings a preset may set (its schedule is the ``schedule`` entry)."""
ENTRY_KEYS = ("source", "learner", "schedule", "method_kwargs", "deviates")


@dataclass(frozen=True)
class MethodPreset:
    """One method's ``authors`` preset.

    Args:
        source: the repository, script and dataset the values come from.
        learner: LearnerConfig values among :data:`LEARNER_KEYS`.
        schedule: ``(every, gamma)``: the lr times gamma every ``every`` of the budget (the script's StepLR
            step over its epochs); None: a constant lr; ``keep``: the task's own schedule.
        method_kwargs: the method's keyword arguments.
        deviates: what the preset cannot carry.
    """

    source: str
    learner: dict[str, Any] = field(default_factory=dict)
    schedule: tuple[float, float] | None | str = "keep"
    method_kwargs: dict[str, Any] = field(default_factory=dict)
    deviates: str = ""

    def layer(self, budget: int | None, explicit: dict[str, Any]) -> dict[str, Any]:
        """The run-config mapping this preset sets, for a run of ``budget`` learner iterations.

        ``explicit``: the flags and overrides of the run (a schedule set there is not computed here).
        """
        learner = dict(self.learner)
        learner["method_kwargs"] = dict(self.method_kwargs)
        given = explicit.get("learner") or {}
        if self.schedule is None:
            learner["lr_decay_every"] = None
        elif self.schedule != "keep" and "lr_decay_every" not in given:
            every, gamma = self.schedule
            if budget is None:
                raise ConfigError(f"the authors' preset ({self.source}) decays the lr at a fraction of the budget: "
                                  "give the budget in iterations (--iterations) or set learner.lr_decay_every")
            learner["lr_decay_every"], learner["lr_decay_gamma"] = max(1, round(every * budget)), gamma
        return {"learner": learner}


def _entry(method: str, data: Any, where: str) -> MethodPreset:
    """The preset of ``method`` from its entry of the preset file, checked (one clear line when not)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the preset of '{method}' must be a mapping")
    for key in data:
        if key not in ENTRY_KEYS:
            raise ConfigError(f"{where}: unknown key '{shown(key)}' in the preset of '{method}'"
                              f"{did_you_mean(str(key), ENTRY_KEYS)}")
    source = data.get("source")
    if not isinstance(source, str) or not source.strip():
        raise ConfigError(f"{where}: the preset of '{method}' must name its source script")
    learner = data.get("learner") or {}
    if not isinstance(learner, dict) or any(key not in LEARNER_KEYS for key in learner):
        raise ConfigError(f"{where}: the learner of the preset of '{method}' may set {list(LEARNER_KEYS)} only")
    kwargs = data.get("method_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ConfigError(f"{where}: the method_kwargs of the preset of '{method}' must be a mapping")
    schedule: tuple[float, float] | None | str = "keep"
    if "schedule" in data:
        raw = data["schedule"]
        if raw is None:
            schedule = None
        elif (isinstance(raw, dict) and set(raw) == {"every", "gamma"}
              and all(isinstance(raw[k], (int, float)) and math.isfinite(raw[k]) for k in raw)
              and 0 < raw["every"] <= 1 and 0 < raw["gamma"] <= 1):
            schedule = (float(raw["every"]), float(raw["gamma"]))
        else:
            raise ConfigError(f"{where}: the schedule of the preset of '{method}' must be null or "
                              f"{{every: (0, 1], gamma: (0, 1]}}, got {shown(raw)}")
    return MethodPreset(source.strip(), dict(learner), schedule, dict(kwargs), str(data.get("deviates") or ""))


def load_presets(path: Path = PRESET_FILE) -> dict[str, MethodPreset]:
    """The ``authors`` presets of the file ``path``, by method name, each entry checked."""
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the presets must be a mapping of method names")
    return {str(method): _entry(str(method), entry, str(path)) for method, entry in data.items()}


@lru_cache(maxsize=1)
def authors_presets() -> dict[str, MethodPreset]:
    """The shipped ``authors`` presets (read once per process)."""
    return load_presets()


def check_preset(preset: str) -> str:
    """``preset`` if it is one of :data:`PRESETS`; else a :class:`ConfigError`."""
    if preset not in PRESETS:
        raise ConfigError(f"preset must be one of {list(PRESETS)}, got '{shown(preset)}'"
                          f"{did_you_mean(str(preset), PRESETS)}")
    return preset


def preset_layer(preset: str, resolved: dict[str, Any], explicit: dict[str, Any]) -> dict[str, Any]:
    """The run-config layer of ``preset`` for the run config ``resolved`` (its method and budget).

    ``explicit``: the flags and overrides, applied over the layer by the caller. The ``common`` preset
    is the empty layer; a method without an ``authors`` entry is one clear error.
    """
    if check_preset(preset) == "common":
        return {}
    method = (resolved.get("learner") or {}).get("method", LearnerConfig.method)
    presets = authors_presets()
    if method not in presets:
        raise ConfigError(f"the method '{shown(method)}' has no '{preset}' preset (in {PRESET_FILE.name})"
                          f"{did_you_mean(str(method), presets)}")
    budget = resolved.get("n_iterations", RunConfig.n_iterations) if resolved.get("epochs") is None \
        else resolved.get("n_iterations")
    return presets[method].layer(budget, explicit)
