"""dus-gym: Data-aware Unimodal Sampling (DUS) for multimodal learning, as a reinforcement-learning problem.

Importing the package registers one Gymnasium env per spec in envs/ (e.g. ``dus_gym/MFeat-v0``,
``dus_gym/Synthetic-v0``); torch is only imported when an env is made.
"""

from dus_gym.registration import register_envs

__version__ = "0.1.0"

ENV_IDS = register_envs()
"""The env ids registered from the shipped specs."""

__all__ = ["ENV_IDS", "__version__", "register_envs"]
