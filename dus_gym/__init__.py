"""dus-gym: Data-aware Unimodal Sampling (DUS) for multimodal learning, as a reinforcement-learning problem.

Importing the package registers one Gymnasium env per shipped spec (``dus_gym/Synthetic-v0``,
``dus_gym/MFeat-v0``, ``dus_gym/CremaD-v0``, ``dus_gym/KineticsSounds-v0``) without reading any
file; a spec is read, and torch imported, when its env is made.

The package is layered; each layer imports only those before it:

- :mod:`dus_gym.core`: configuration, the multimodal model, the single and batched learners, the
  batch plan, the CMD monitor, training episodes, balancing methods, checkpoints;
- :mod:`dus_gym.tasks`: built-in tasks and the task table;
- :mod:`dus_gym.samplers`: from the CMD state to per-modality counts (rules and a saved policy);
- :mod:`dus_gym.rl`: the Gymnasium env, vectorised envs, PPO training of a sampling policy;
- :mod:`dus_gym.experiments`: a full run, comparisons and the bench;
- :mod:`dus_gym.cli`: the ``dus-gym`` command.
"""

from dus_gym.rl.registration import SHIPPED_ENVS, register_envs

__version__ = "0.1.0"

ENV_IDS: tuple[str, ...] = tuple(register_envs())
"""The env ids registered from the shipped specs."""

__all__ = ["ENV_IDS", "SHIPPED_ENVS", "__version__", "register_envs"]
