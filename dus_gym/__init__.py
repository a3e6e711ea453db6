"""dus-gym: Data-aware Unimodal Sampling (DUS) for multimodal learning, as a reinforcement-learning problem.

Importing the package registers one Gymnasium env per shipped spec (``envs/*.yaml``; the ids are
:data:`ENV_IDS`, e.g. ``dus_gym/SyntheticFamily-v1``, the default of ``train_policy.py``) without
reading any file; a spec is read, and torch imported, when its env is made.

The package is layered; each layer imports only those before it:

- :mod:`dus_gym.core`: configuration, the task contract, the multimodal model, the single and batched
  learners, the batch plan, the CMD monitor and its observation, training episodes, balancing
  methods, checkpoints;
- :mod:`dus_gym.tasks`: built-in tasks, task families and the task table;
- :mod:`dus_gym.samplers`: from the CMD state to per-modality counts (rules and a saved policy);
- :mod:`dus_gym.envs`: the Gymnasium env, its registration, wrappers, rendering and vector envs;
- :mod:`dus_gym.agents`: the modality policy for SB3's PPO, its hyper-parameters, callbacks and evaluation;
- :mod:`dus_gym.experiments`: the applications: a full run, comparisons, the bench, policy training,
  tuning and reference agents;
- :mod:`dus_gym.cli`: the ``dus-gym`` command.

A test (tests/test_layers.py) fails when a layer imports a later one.
"""

import os
import sys


def _drop_working_folder() -> None:
    """``python -m dus_gym``: take the working folder off ``sys.path`` before anything else is imported.

    Python puts the working folder first on ``sys.path`` for ``-m`` (unless ``-P``), so a ``gymnasium.py``
    or ``torch.py`` lying there would be imported instead of the installed package. While ``-m`` locates
    this package ``sys.argv[0]`` is ``"-m"``; the package itself is already found, and its modules are
    found through its own path. A ``module:function`` task is still imported with the working folder
    searched last (:mod:`dus_gym.tasks`), as the ``dus-gym`` console script does.
    """
    orig = list(getattr(sys, "orig_argv", []))
    run_as_module = sys.argv[:1] == ["-m"] and any(
        a == "-m" and b.split(".")[0] == __name__ for a, b in zip(orig, orig[1:], strict=False))
    if run_as_module:
        cwd = os.getcwd()
        sys.path[:] = [p for p in sys.path if p not in ("", ".", cwd)]
        # the folder this package lives in goes last (installed packages first): spawned worker processes
        # start from this sys.path and must still find the package (an editable install run from the checkout)
        home = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        if home not in sys.path:
            sys.path.append(home)


_drop_working_folder()

from dus_gym.envs.registration import SHIPPED_ENVS, register_envs  # noqa: E402 (after the sys.path guard)

__version__ = "0.1.0"

ENV_IDS: tuple[str, ...] = tuple(register_envs())
"""The env ids registered from the shipped specs."""

__all__ = ["ENV_IDS", "SHIPPED_ENVS", "__version__", "register_envs"]
