"""Samplers: from the CMD state to per-modality sample counts, found by name through one table.

``uniform``, ``heuristic`` (DUS), ``constant`` and ``schedule`` (an open-loop replay) are rules
(:mod:`.rules`); ``ppo`` acts with a saved SB3 policy (:mod:`.ppo`). A user's own sampler
subclasses :class:`Sampler` and joins with :func:`register_sampler`.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from dus_gym.core.config import ConfigError, checked_kwargs
from dus_gym.core.registry import Registry
from dus_gym.samplers.base import Sampler, SamplerState

SAMPLERS: Registry[type[Sampler]] = Registry("sampler", {
    "uniform": "dus_gym.samplers.rules:UniformSampler",
    "heuristic": "dus_gym.samplers.rules:HeuristicSampler",
    "constant": "dus_gym.samplers.rules:ConstantSampler",
    "schedule": "dus_gym.samplers.rules:ScheduleSampler",
    "ppo": "dus_gym.samplers.ppo:PolicySampler",
})
"""Sampler name -> class (or "module:Class", imported on first use)."""


def register_sampler(name: str, sampler: type[Sampler] | str) -> None:
    """Make a :class:`Sampler` subclass (or ``"module:Class"``) available under ``name``."""
    SAMPLERS.register(name, sampler)


def make_sampler(name: str, batch_size: int, n_modalities: int, **kwargs: Any) -> Sampler:
    """Build the sampler ``name`` with its keyword arguments."""
    if name not in SAMPLERS:
        raise SAMPLERS.unknown(name)
    cls = SAMPLERS.get(name)
    try:
        kwargs = checked_kwargs(cls, kwargs, "sampler_kwargs", reserved=("batch_size", "n_modalities"))
        return cls(batch_size, n_modalities, **kwargs)
    except (TypeError, ConfigError) as err:
        raise ValueError(f"bad arguments for sampler '{name}': {err}") from err


def overrides_per_sampler(overrides: dict[str, Any], samplers: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The run-config overrides of each of ``samplers``: ``sampler_kwargs`` keys go to the samplers that take them.

    Commands that run several samplers (``compare``, ``bench``) take one ``--set sampler_kwargs.k=v``
    for all of them: ``alpha`` reaches the heuristic and not the uniform sampler. A key that none of
    ``samplers`` takes is an error (a typo must not be dropped silently).
    """
    given = overrides.get("sampler_kwargs")
    if not isinstance(given, dict):
        return {name: overrides for name in samplers}
    per_sampler, taken = {}, set()
    for name in samplers:
        if name not in SAMPLERS:
            raise SAMPLERS.unknown(name)
        parameters = inspect.signature(SAMPLERS.get(name)).parameters
        keys = {k for k in given if k in parameters and k not in ("batch_size", "n_modalities")}
        taken |= keys
        per_sampler[name] = {**overrides, "sampler_kwargs": {k: v for k, v in given.items() if k in keys}}
    unused = sorted(set(given) - taken)
    if unused:
        raise ConfigError(f"sampler_kwargs {unused} are taken by none of the samplers {list(samplers)}")
    return per_sampler


__all__ = ["SAMPLERS", "Sampler", "SamplerState", "make_sampler", "overrides_per_sampler", "register_sampler"]
