"""The exceptions dus-gym raises for bad input, in one place (as ``gymnasium.error``).

Each is also a built-in exception (``ValueError`` or ``RuntimeError``), so that code catching those
keeps working; the message says what is wrong and what to do. The ``dus-gym`` command prints it as
one line and exits with status 2.
"""

from __future__ import annotations


class Error(Exception):
    """Base class of dus-gym's own exceptions."""


class ConfigError(Error, ValueError):
    """A configuration that cannot be used (a setting, a file, a flag); the message says what to change."""


class ActionError(Error, ValueError):
    """An action outside the action space (wrong shape, dtype, NaN/inf or range): the agent's fault, not the env's."""


class DivergedError(Error, RuntimeError):
    """The learner's loss became NaN or inf."""


__all__ = ["ActionError", "ConfigError", "DivergedError", "Error"]
