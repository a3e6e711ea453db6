"""Gymnasium wrappers of the policy-training envs."""

from __future__ import annotations

import logging
from typing import Any

import gymnasium as gym
import numpy as np

from dus_gym.core.observation import GLOBAL_FEATURES, MODALITY_FEATURES
from dus_gym.samplers.action import ActionError

logger = logging.getLogger(__name__)


class ErrorRecoveryWrapper(gym.Wrapper):
    """Turns an exception raised inside the env into a truncated transition, so PPO keeps training.

    A policy-training run lasts hours over many envs; one env that raises (an unreadable clip, a
    CUDA hiccup, a bug met on a rare path) should not take the agent down with it. When the
    wrapped env's ``step`` raises, the wrapper logs a warning, returns the last observation with
    reward ``-penalty``, ``truncated=True`` and ``info["env_error"]`` (the exception), and the vec
    env then resets the env as after any episode end. A failing ``reset`` is retried. An invalid
    action (:class:`dus_gym.samplers.action.ActionError`) is the agent's fault and is raised, as is the
    exception of the ``max_errors``-th failure in a row (a broken env must still stop the run): with
    the default 3, two failures in a row are absorbed and the third is raised.

    Args:
        env: the env to protect.
        max_errors: the failure in a row (steps or resets without a good step between) that is re-raised.
        penalty: subtracted from the reward of the failed step (0: an env failure is not the agent's doing).
    """

    def __init__(self, env: gym.Env, max_errors: int = 3, penalty: float = 0.0) -> None:
        super().__init__(env)
        if max_errors < 1:
            raise ValueError(f"max_errors must be >= 1, got {max_errors}")
        self.max_errors = max_errors
        self.penalty = float(penalty)
        self.n_errors = 0
        """Failures caught since the wrapper was made."""
        self._in_a_row = 0
        self._last_obs: Any = None
        keywords = getattr(env.unwrapped, "info_keywords", None)
        self._keywords: tuple[str, ...] = tuple(keywords()) if callable(keywords) else ()

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        """Reset the env, retrying (without the seed) after a failure."""
        while True:
            try:
                obs, info = self.env.reset(**kwargs)
                break
            except Exception as err:
                self._failed("reset", err)
                kwargs.pop("seed", None)  # the same seed would fail the same way
        self._last_obs = obs
        return obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """Step the env; an exception becomes a truncated transition (see the class docstring)."""
        try:
            obs, reward, terminated, truncated, info = self.env.step(action)
        except ActionError:
            raise
        except Exception as err:
            self._failed("step", err)
            if self._last_obs is None:
                raise
            # what an episode end must report to a Monitor; NaN, not a made-up value
            info = {key: float("nan") for key in self._keywords}
            info["env_error"] = f"{type(err).__name__}: {err}"
            return self._last_obs, -self.penalty, False, True, info
        self._in_a_row = 0
        self._last_obs = obs
        return obs, reward, terminated, truncated, info

    def _failed(self, where: str, err: Exception) -> None:
        self.n_errors += 1
        self._in_a_row += 1
        if self._in_a_row >= self.max_errors:
            raise err
        spec = self.env.spec.id if self.env.spec is not None else type(self.env.unwrapped).__name__
        logger.warning("env %s raised in %s (%s: %s); the episode is truncated and the env reset "
                       "(%d failure(s) so far)", spec, where, type(err).__name__, err, self.n_errors)


def is_finite_info(value: Any) -> bool:
    """True for a finite number (the NaN placeholders of a failed step are not logged as metrics)."""
    try:
        return bool(np.isfinite(float(value)))
    except (TypeError, ValueError):
        return False


class DictObservation(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """The "modalities" observation as a ``Dict`` space, for policies that read named parts (SB3's MultiInputPolicy).

    The flat vector of a family env (:mod:`dus_gym.core.observation`, ``observation="modalities"``)
    becomes three entries:

    - ``"modalities"``: ``Box((slots, F))``, one row of the per-modality features per slot
      (:data:`~dus_gym.core.observation.MODALITY_FEATURES` without the mask);
    - ``"mask"``: ``MultiBinary(slots)``, 1 for a slot that holds a modality of this episode's task;
    - ``"global"``: ``Box((2,))``, the progress t / T and the fused validation accuracy.

    The values are the flat observation's, entry for entry; only the layout changes. On a task
    with fewer modalities than slots, the last rows are zero and their mask 0, and the env ignores
    the action entries of those slots (an allocation action; the strength action has one entry).

    Args:
        env: a DUS env with ``observation="modalities"``.
    """

    def __init__(self, env: gym.Env) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.ObservationWrapper.__init__(self, env)

        layout = getattr(env.unwrapped, "layout", None)
        if layout is None or layout.kind != "modalities":
            raise ValueError("DictObservation needs a DUS env with observation='modalities' (the family envs)")
        self.slots, self.n_features = layout.slots, len(MODALITY_FEATURES)
        self.mask_index = MODALITY_FEATURES.index("mask")
        self.keep = [i for i in range(self.n_features) if i != self.mask_index]
        low, high = layout.bounds()
        rows_low = low[:self.slots * self.n_features].reshape(self.slots, self.n_features)[:, self.keep]
        rows_high = high[:self.slots * self.n_features].reshape(self.slots, self.n_features)[:, self.keep]
        self.observation_space = gym.spaces.Dict({
            "modalities": gym.spaces.Box(rows_low, rows_high, dtype=np.float32),
            "mask": gym.spaces.MultiBinary(self.slots),
            "global": gym.spaces.Box(low[-len(GLOBAL_FEATURES):], high[-len(GLOBAL_FEATURES):], dtype=np.float32),
        })

    def observation(self, observation: np.ndarray) -> dict[str, np.ndarray]:
        """The flat vector split into the three entries."""
        rows = np.asarray(observation[:self.slots * self.n_features], dtype=np.float32).reshape(self.slots,
                                                                                                 self.n_features)
        return {"modalities": rows[:, self.keep].copy(), "mask": rows[:, self.mask_index].round().astype(np.int8),
                "global": np.asarray(observation[self.slots * self.n_features:], dtype=np.float32)}
