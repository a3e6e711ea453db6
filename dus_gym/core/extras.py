"""Optional dependencies (pyproject's extras): a module, or one line saying which extra installs it.

The core install (``pip install dus-gym``) is what the env, ``dus-gym run``/``compare`` and
``train_policy.py`` need; ``bench`` (plots), ``av`` (frames and images), ``imagetext``, ``gesture``,
``ray``, ``tune`` (Optuna) and ``docs`` add what only some users need.
"""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module``; an ImportError naming ``pip install 'dus-gym[extra]'`` when it is missing.

    Args:
        module: the module to import (e.g. ``"PIL.Image"``).
        extra: the extra of pyproject.toml that installs it.
        what: what needs it, for the message, in the plural (e.g. ``"the bench plots"``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{module.split('.')[0]} is not installed ({what} need it): pip install "
                          f"'dus-gym[{extra}]' ({err})") from err
