"""The ``ppo`` sampler: counts from a saved SB3 policy, as in the env it was trained in.

A policy trained in a :class:`dus_gym.envs.env.DUSEnv` is saved as a folder with ``policy.zip`` (the SB3
model), ``vecnormalize.pkl`` (observation statistics, when used) and ``policy.json`` (the env
settings it was trained under: step size K, action mapping, B, M, and the SHA-256 digests of
``policy.zip`` and ``vecnormalize.pkl``). Loading a zip or a pickle unpickles Python objects, which
can run code: load only policies you trust. The digests are checked before anything is unpickled, so a
pickled file that was replaced or damaged apart from its policy.json is refused unread; they are no
signature (whoever can write policy.zip can write policy.json), so they do not make a folder from an
untrusted source safe.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3 import PPO

from dus_gym.core.config import ConfigError, EnvConfig, from_dict
from dus_gym.core.files import sha256_of
from dus_gym.core.observation import ObservationLayout
from dus_gym.samplers.action import CountsAction
from dus_gym.samplers.base import Sampler, SamplerState

POLICY_FORMAT = "dus-gym-policy"
POLICY_VERSION = 3
"""Version 2: policy.json holds the SHA-256 digests of policy.zip and vecnormalize.pkl. Version 3: policy.zip
names the policy class at its module ``dus_gym.agents.policies`` (a version-2 zip names ``dus_gym.rl.policies``,
which no longer exists, so it cannot be unpickled)."""
ACTING_OBJECTS = {"learning_rate": 0.0, "lr_schedule": lambda _: 0.0, "clip_range": lambda _: 0.0}
"""What ``PPO.load`` need not unpickle to act (the training schedules), as the RL Zoo's enjoy script does."""


def resolve_policy_dir(path: str | Path) -> Path:
    """The policy folder from a folder or from its ``policy.zip``; a clear error if incomplete."""
    path = Path(path)
    folder = path.parent if path.suffix == ".zip" else path
    if not (folder / "policy.zip").is_file() or not (folder / "policy.json").is_file():
        raise FileNotFoundError(f"no saved policy at {path}: expected a folder with policy.zip and policy.json "
                                "(written by train_policy.py)")
    return folder


REQUIRED_SETTINGS = {"modalities": list, "batch_size": int, "env": dict, "digests": dict}
REQUIRED_ENV_SETTINGS = {"n_min": int, "n_max": int, "action_type": str, "count_levels": list,
                         "iterations_per_step": int}
"""The entries of policy.json the sampler acts with, and their JSON types."""


def read_policy_settings(folder: Path) -> dict[str, Any]:
    """Read and check ``policy.json`` (format, version, and every entry the sampler needs)."""
    try:
        settings = json.loads((folder / "policy.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{folder / 'policy.json'} is not valid JSON ({err})") from err
    if not isinstance(settings, dict) or settings.get("format") != POLICY_FORMAT:
        raise ValueError(f"{folder / 'policy.json'} is not a dus-gym policy description")
    if settings.get("version") != POLICY_VERSION:
        raise ValueError(f"policy at {folder} has format version {settings.get('version')}, this dus-gym reads "
                         f"version {POLICY_VERSION}; retrain it with train_policy.py")
    for where, table, required in (("", settings, REQUIRED_SETTINGS),
                                   ("env.", settings.get("env"), REQUIRED_ENV_SETTINGS)):
        for key, kind in required.items():
            value = table.get(key) if isinstance(table, dict) else None
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(f"{folder / 'policy.json'} lacks a valid '{where}{key}' ({kind.__name__}); it is "
                                 "written by train_policy.py: retrain the policy or restore the file")
    return settings


def check_digests(folder: Path, settings: dict[str, Any]) -> None:
    """Check policy.zip and vecnormalize.pkl against the SHA-256 digests of policy.json, before unpickling them.

    Raises:
        ValueError: a pickled file without its digest, a digest without its file, or a file whose digest differs.
    """
    digests = settings["digests"]
    for name in ("policy.zip", "vecnormalize.pkl"):
        path, expected = folder / name, digests.get(name)
        if expected is None and path.exists():
            raise ValueError(f"{path} has no digest in {folder / 'policy.json'}: it was not written with this policy "
                             "by train_policy.py and is not unpickled; remove it or retrain the policy")
        if expected is None:
            continue
        if not path.is_file():
            raise ValueError(f"{path} is missing (policy.json lists its digest); restore it or retrain the policy")
        if not isinstance(expected, str) or sha256_of(path) != expected:
            raise ValueError(f"{path} does not match its SHA-256 digest in {folder / 'policy.json'} (replaced or "
                             "damaged): it is not unpickled; restore the file or retrain the policy")


class PolicySampler(Sampler):
    """Counts from a saved SB3 policy, decided every K iterations as in the env it was trained in.

    The observation is built from the sampler's state in the layout the policy was trained with
    (:class:`dus_gym.core.observation.ObservationLayout`), clipped to the policy's observation space
    and normalised with the saved VecNormalize statistics; the action is mapped to counts as the
    env maps it; the counts are held for K iterations, as one env step does. A policy trained on a
    "modalities" observation serves any task of up to its number of modality slots.

    Args:
        batch_size: B (the policy's B for a "cmd" policy; any B for a "modalities" one, whose features and
            allocation are relative to B).
        n_modalities: M (the policy's M, or at most its modality slots).
        policy: folder of the saved policy, or its policy.zip (trusted input only: it is unpickled).
        deterministic: take the mean action (True) or sample from the policy.
        commit_after: a control: after this many decisions, hold the counts of the last one to the end of
            the run (identify, then commit); None: decide every K iterations throughout.
    """

    name = "ppo"

    def __init__(self, batch_size: int, n_modalities: int, policy: str = "", deterministic: bool = True,
                 commit_after: int | None = None) -> None:
        super().__init__(batch_size, n_modalities)
        if not policy:
            raise ValueError("the ppo sampler needs a policy: --policy PATH (a folder written by train_policy.py)")
        if commit_after is not None and commit_after < 1:
            raise ValueError(f"commit_after must be >= 1 decisions (or null), got {commit_after}")
        self.commit_after = commit_after
        folder = resolve_policy_dir(policy)
        settings = read_policy_settings(folder)
        try:
            env = from_dict(EnvConfig, settings["env"], "env")
        except (KeyError, ConfigError) as err:
            raise ValueError(f"{folder / 'policy.json'} has no valid env settings ({err}); retrain it") from err
        if env.observation == "cmd" and len(settings["modalities"]) != n_modalities:
            raise ValueError(f"policy at {folder} was trained for {len(settings['modalities'])} modalities "
                             f"{settings['modalities']}, this task has {n_modalities}")
        widen = env.observation == "modalities" and n_modalities > env.max_modalities
        if widen:  # a modality-agnostic policy serves more modalities than it was trained with
            env = replace(env, max_modalities=n_modalities)
        if env.observation == "cmd" and settings["batch_size"] != batch_size:  # "modalities" is relative to B
            raise ValueError(f"policy at {folder} was trained with B = {settings['batch_size']}, this run has "
                             f"B = {batch_size}; set learner.batch_size={settings['batch_size']}")
        self.actions = CountsAction.of(env, n_modalities, batch_size)
        self.layout = ObservationLayout.of(env, n_modalities, batch_size, self.actions.max_count)
        self.iterations_per_step = env.iterations_per_step
        if env.observation == "modalities" and not env.blind:
            self.validation_every = self.iterations_per_step  # the env scores the validation split every step
        self.deterministic = deterministic
        self.settings = settings
        check_digests(folder, settings)  # before anything is unpickled
        try:
            # unpickles: trusted input only; the training schedules are not needed to act
            self.model = PPO.load(folder / "policy.zip", device="cpu", custom_objects=ACTING_OBJECTS)
        except Exception as err:  # a truncated zip, another SB3's pickles, a file that is no model
            raise ValueError(f"{folder / 'policy.zip'} is not a loadable SB3 PPO model ({type(err).__name__}: "
                             f"{err}); retrain it with train_policy.py") from err
        if widen:
            if not hasattr(self.model.policy, "widened"):
                raise ValueError(f"policy at {folder} serves tasks of up to {settings['env']['max_modalities']} "
                                 f"modalities, this task has {n_modalities}")
            self.model.policy = self.model.policy.widened(n_modalities)
            self.model.observation_space = self.model.policy.observation_space
        if self.model.observation_space.shape != (self.layout.size,):
            raise ValueError(f"policy at {folder} expects observations of shape "
                             f"{self.model.observation_space.shape}, this task gives {(self.layout.size,)}")
        self.obs_rms = None
        if (folder / "vecnormalize.pkl").is_file():
            path = folder / "vecnormalize.pkl"
            try:
                with open(path, "rb") as f:
                    vec_normalize = pickle.load(f)  # noqa: S301 (trusted input, documented)
            except Exception as err:  # a truncated or foreign pickle raises many types
                raise ValueError(f"{path} is not readable VecNormalize statistics ({type(err).__name__}); "
                                 "restore it from the run's checkpoints/ or retrain the policy") from err
            if not hasattr(vec_normalize, "norm_obs") or not hasattr(vec_normalize, "normalize_obs"):
                raise ValueError(f"{path} holds a {type(vec_normalize).__name__}, not VecNormalize statistics")
            if vec_normalize.norm_obs:
                self.obs_rms = vec_normalize
        self._held: np.ndarray | None = None
        self._decisions = 0
        self._committed: np.ndarray | None = None

    def reset(self) -> None:
        """Forget the held action and counts."""
        self._held = None
        self._decisions = 0
        self._committed = None

    def state_dict(self) -> dict[str, Any]:
        """The action held until the next decision, the decisions so far and the committed counts."""
        return {"held": None if self._held is None else self._held.tolist(), "decisions": self._decisions,
                "committed": None if self._committed is None else self._committed.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        held, committed = state.get("held"), state.get("committed")
        self._held = None if held is None else np.asarray(held)
        self._decisions = int(state.get("decisions", 0))
        self._committed = None if committed is None else np.asarray(committed, dtype=np.int64)

    def observation(self, state: SamplerState) -> np.ndarray:
        """The observation the policy was trained on, built from ``state``."""
        return self.layout.build(state, state.counts, state.progress, state.val_status, state.val_acc)

    def normalize(self, observation: np.ndarray) -> np.ndarray:
        """The observation as the policy saw it in training (clipped to its space, then normalised)."""
        space = self.model.observation_space
        observation = np.clip(observation, space.low, space.high).astype(np.float32)
        if self.obs_rms is None:
            return observation
        return self.obs_rms.normalize_obs(observation[None])[0].astype(np.float32)

    def decide(self, observation: np.ndarray) -> np.ndarray:
        """The action the policy chooses for an observation of its layout (clipped to the box)."""
        action, _ = self.model.predict(self.normalize(observation), deterministic=self.deterministic)
        if self.actions.action_type != "multidiscrete":
            action = np.clip(action, -1.0, 1.0)  # a Gaussian policy's sample may leave the box, as SB3 clips it
        return np.asarray(action)

    def act(self, observation: np.ndarray, discrepancy: np.ndarray | None = None) -> np.ndarray:
        """The counts the policy chooses for an observation of its layout (and d_t, for the strength action)."""
        return self.actions.to_counts(self.decide(observation), discrepancy)

    def counts(self, state: SamplerState) -> np.ndarray:
        """A new decision every K iterations, held in between.

        The strength action reacts to d_t at every iteration with the held alpha. With ``commit_after``, once
        that many decisions are made, the counts the last one gives at that iteration are held to the end.
        """
        if self._committed is not None:
            return self._committed.copy()
        if self._held is None or state.iteration % self.iterations_per_step == 0:
            if self.commit_after is not None and self._decisions >= self.commit_after:
                self._committed = self.actions.to_counts(self._held, state.discrepancy)
                return self._committed.copy()
            self._held = self.decide(self.observation(state))
            self._decisions += 1
        return self.actions.to_counts(self._held, state.discrepancy)
