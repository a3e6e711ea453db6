"""``dus-gym prepare``: the table of data sets that turn from raw releases into prepared layouts.

Each entry is a function ``(src, dst, *, <its options>, workers, progress) -> metadata``; the
command line passes only the options the user gave, and an option a data set does not take is
one clear error instead of being ignored.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from dus_gym.core.config import ConfigError
from dus_gym.core.registry import Registry

PREPARERS: Registry = Registry("data set", {
    "cremad": "dus_gym.tasks.audiovisual.prepare:prepare_cremad",
    "kinetics-sounds": "dus_gym.tasks.audiovisual.prepare:prepare_kinetics_sounds",
    "twitter2015": "dus_gym.tasks.imagetext.prepare:prepare_twitter2015",
    "sarcasm": "dus_gym.tasks.imagetext.prepare:prepare_sarcasm",
    "nvgesture": "dus_gym.tasks.gesture.prepare:prepare_nvgesture",
})
"""Data set name -> its prepare function (or "module:function")."""


def prepare(dataset: str, src: str | Path, dst: str | Path, **options: Any) -> dict[str, Any]:
    """Prepare ``dataset`` from ``src`` into ``dst`` with ``options`` (None values are left at their defaults).

    Raises:
        ConfigError: an unknown data set, or an option it does not take.
        ValueError: a size or count outside its range (:data:`dus_gym.tasks.layout.OPTION_BOUNDS`).
    """
    function = PREPARERS.get(dataset)
    given = {key: value for key, value in options.items() if value is not None}
    accepted = [name for name in inspect.signature(function).parameters if name not in ("src", "dst")]
    unused = [key for key in given if key not in accepted]
    if unused:
        flags = ", ".join(f"--{key.replace('_', '-')}" for key in unused)
        valid = ", ".join(f"--{key.replace('_', '-')}" for key in accepted if key != "progress")
        raise ConfigError(f"{flags} does not apply to '{dataset}' (its options: {valid})")
    from dus_gym.tasks.layout import OPTION_BOUNDS, check_option

    for key in OPTION_BOUNDS:  # sizes and counts in their documented ranges, before anything is read
        check_option(key, given.get(key))
    return function(src, dst, **given)
