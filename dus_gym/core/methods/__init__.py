"""Balancing methods: how one iteration's losses and gradients are formed (DUS is a plug-in to them).

- ``joint``: CE of the concatenation fusion head only.
- ``unimodal-aux``: fusion CE + sum_m w(m) CE(head_m) on m's own samples (DUS's base; the default).
- ``ogm-ge``: Peng et al., "Balanced Multimodal Learning via On-the-fly Gradient Modulation", CVPR 2022.
- ``mmpareto``: Wei and Hu, "MMPareto: Boosting Multimodal Learning with Innocent Unimodal
  Assistance", ICML 2024.
- ``mla``: Zhang et al., "Multimodal Representation Learning by Alternating Unimodal Adaptation",
  CVPR 2024.

Formulas are implemented from the papers (and the authors' published hyper-parameters); the
pure functions (``ogm_ge_coefficients``, ``mmpareto_weights``, ``mla_projector_update``,
``entropy_fusion``) are unit-tested on hand-made numbers. A user's own method subclasses
:class:`~dus_gym.core.methods.base.Method` and joins with :func:`register_method`.
"""

from __future__ import annotations

from typing import Any

from dus_gym.core.config import ConfigError, checked_kwargs, did_you_mean
from dus_gym.core.methods.base import IterationBatch, Method, MethodOutput, StepContext
from dus_gym.core.registry import Registry

METHODS: Registry[type[Method]] = Registry("method", {
    "joint": "dus_gym.core.methods.joint:Joint",
    "unimodal-aux": "dus_gym.core.methods.unimodal_aux:UnimodalAux",
    "ogm-ge": "dus_gym.core.methods.ogm_ge:OGMGE",
    "mmpareto": "dus_gym.core.methods.mmpareto:MMPareto",
    "mla": "dus_gym.core.methods.mla:MLA",
})
"""Method name -> class (or "module:Class", imported on first use)."""


def register_method(name: str, method: type[Method] | str) -> None:
    """Make a :class:`Method` subclass (or ``"module:Class"``) available under ``name``."""
    METHODS.register(name, method)


def method_class(name: str) -> type[Method]:
    """The class of a registered method; one clear error (with the nearest name) for an unknown one."""
    if name not in METHODS:
        lower = name.lower()
        close = f" (did you mean '{lower}'?)" if lower in METHODS else did_you_mean(lower, METHODS)
        raise ConfigError(f"unknown method '{name}'{close}; choose from {sorted(METHODS)}")
    return METHODS.get(name)


def make_method(name: str, **kwargs: Any) -> Method:
    """Build a registered method; one clear error for an unknown name or keyword."""
    cls = method_class(name)
    try:
        checked = checked_kwargs(cls, kwargs, "learner.method_kwargs")
    except ConfigError as err:
        raise ConfigError(f"{err} (method '{name}')") from err
    return cls(**checked)


__all__ = ["METHODS", "IterationBatch", "Method", "MethodOutput", "StepContext", "make_method", "method_class",
           "register_method"]
