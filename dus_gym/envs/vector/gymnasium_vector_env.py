"""DUSVectorEnv: N DUS envs with batched learners as a Gymnasium ``VectorEnv`` (``gymnasium.make_vec``).

Every DUS id is registered with :func:`make_spec_vector_env` as its ``vector_entry_point``, so
``gymnasium.make_vec("dus_gym/Synthetic-v0", num_envs=N)`` (or with
``vectorization_mode="vector_entry_point"``) returns N envs whose learners train in one batched
computation (:class:`dus_gym.envs.vector.batched.BatchedEnvs`, the core it shares with SB3's
``VecDUSEnv``). Given the same seeds and actions it returns what
``gymnasium.make_vec(id, num_envs=N, vectorization_mode="sync")`` returns: the same observations,
rewards, terminations, truncations and infos (to float tolerance), in Gymnasium 1.x's layout:
infos are a dict of arrays, each key ``k`` with its mask ``_k`` of the envs that have it.

Auto-reset (``metadata["autoreset_mode"]``, Gymnasium's ``AutoresetMode``):

- ``NEXT_STEP`` (default, as ``SyncVectorEnv``): an env whose episode ended is reset by the next
  ``step``, which ignores its action and returns its first observation with reward 0;
- ``SAME_STEP``: it is reset within the step that ended it; that step's observation and info go
  to ``info["final_obs"]`` and ``info["final_info"]``;
- ``DISABLED``: it is reset by ``reset(options={"reset_mask": mask})``.

With a task family each env's learner is on its own instance of one shape group, drawn when every
env is reset at once (as ``VecDUSEnv``; ``env.shared_instance: true`` puts all N on one instance);
``reset(options={"instance": k})`` puts every env on instance k, ``{"instance": [k_0, ..., k_N-1]}``
env i on k_i (None: drawn from the shape group of the named ones).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from dus_gym.core.config import ConfigError, check_n_envs
from dus_gym.envs.registration import env_kwargs_of, spec_config
from dus_gym.envs.render import RENDER_FPS, RENDER_MODES, EpisodeTrace, check_render_mode
from dus_gym.envs.vector.batched import BatchedEnvs


class DUSVectorEnv(VectorEnv):
    """N ``DUSEnv`` of the same settings whose learners train together (Gymnasium's ``VectorEnv``).

    Args:
        num_envs: N, a whole number from 1 to :data:`dus_gym.core.config.MAX_ENVS` (1024).
        autoreset_mode: ``AutoresetMode`` or its value ("NextStep", "SameStep", "Disabled").
        render_mode: None, "ansi", "human" or "rgb_array": :meth:`render` returns one frame per env.
        **dus_kwargs: the keyword arguments of ``DUSEnv`` (task, task_kwargs, learner, cmd,
            n_iterations, epochs, family and EnvConfig fields).
    """

    metadata: dict[str, Any] = {"render_modes": list(RENDER_MODES), "render_fps": RENDER_FPS,
                                "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int, autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
                 render_mode: str | None = None, **dus_kwargs: Any) -> None:
        check_n_envs(num_envs)
        check_render_mode(render_mode)
        try:
            self.autoreset_mode = AutoresetMode(autoreset_mode)
        except ValueError as err:
            raise ValueError(f"autoreset_mode must be one of {[m.value for m in AutoresetMode]}, got "
                             f"{autoreset_mode!r}") from err
        self.batch = BatchedEnvs(num_envs, **dus_kwargs)
        self.num_envs = num_envs
        self.render_mode = render_mode
        self.metadata = {**type(self).metadata, "autoreset_mode": self.autoreset_mode}
        self._set_spaces()
        self._ended = np.zeros(num_envs, dtype=bool)
        self._started = False
        self.traces: list[EpisodeTrace] = []

    def _set_spaces(self) -> None:
        t = self.batch.template
        self.single_observation_space = t.observation_space
        self.single_action_space = t.action_space
        self.observation_space = batch_space(t.observation_space, self.num_envs)
        self.action_space = batch_space(t.action_space, self.num_envs)

    @property
    def task(self) -> Any:
        """The one task object whose data every learner shares."""
        return self.batch.task

    @property
    def settings(self) -> dict[str, Any]:
        """What a policy needs to act like in these envs elsewhere (as ``DUSEnv.settings``)."""
        return self.batch.template.settings

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset every env, or those of ``options["reset_mask"]``; env i is seeded with ``seed + i`` or ``seed[i]``.

        ``options["instance"]`` (a family, a full reset only): the instance of every env's next episode,
        or a list of one instance (or None: drawn) per env, of equal shapes.
        """
        if self.closed:
            raise RuntimeError("this DUSVectorEnv is closed; make a new one")
        if options is not None and not isinstance(options, dict):
            raise ValueError(f"reset options must be a dict or None, got {type(options).__name__}")
        super().reset(seed=seed if isinstance(seed, int) else None)
        seeds = self._seeds(seed)
        options = dict(options or {})
        mask = self._reset_mask(options.pop("reset_mask", None))
        instance = options.pop("instance", None)
        if options:
            raise ValueError(f"unknown reset options {sorted(options)}; DUSVectorEnv takes reset_mask and instance")
        if instance is not None and self.batch.template.family is not None:
            instance = self.batch.template.family.check_instance(instance)
        for i in np.flatnonzero(mask):
            self.batch.seed(i, seeds[i])
        if mask.all():
            self.batch.draw_instance(instance)
        elif instance is not None:
            raise ValueError("reset(options={'instance': ...}) resets every env (no reset_mask)")
        envs = np.flatnonzero(mask)
        obs, infos = self._reset_envs(envs)
        out = self._observations(envs, obs)
        self._ended[mask] = False
        self._started = True
        if self.render_mode == "human":
            self.render()
        return out, self._batched_infos(envs, infos)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """K learner iterations of every running env together; auto-reset as ``metadata["autoreset_mode"]`` says."""
        if self.closed:
            raise RuntimeError("this DUSVectorEnv is closed; make a new one")
        if not self._started:
            raise RuntimeError("call reset() before step()")
        actions = self.batch.check_actions(actions)  # every env's action, before any env runs or resets
        infos: dict[str, Any] = {}
        pending = self._ended.copy() if self.autoreset_mode == AutoresetMode.NEXT_STEP else np.zeros_like(self._ended)
        reset_obs, reset_infos = None, []
        if pending.any():
            if pending.all():
                self.batch.draw_instance()
            reset_obs, reset_infos = self._reset_envs(np.flatnonzero(pending))
        active = ~pending
        obs, rewards, terminated, truncated, step_infos = self.batch.step(actions, active)
        for i in np.flatnonzero(active):
            if self.traces:
                self.traces[i].add(self.batch.episodes, i)
        if reset_obs is not None:
            obs[pending] = reset_obs
            for i, info in zip(np.flatnonzero(pending), reset_infos, strict=True):
                step_infos[i] = info
        ended = terminated | truncated
        if self.autoreset_mode == AutoresetMode.SAME_STEP and ended.any():
            done = np.flatnonzero(ended)
            for i in done:
                infos = self._add_info(infos, {"final_obs": obs[i].copy(), "final_info": step_infos[i]}, i)
            if ended.all():
                self.batch.draw_instance()
            obs[done], new_infos = self._reset_envs(done)
            for i, info in zip(done, new_infos, strict=True):
                step_infos[i] = info
        for i, info in enumerate(step_infos):
            infos = self._add_info(infos, info, i)
        self._ended = ended
        if self.render_mode == "human":
            self.render()
        return obs, rewards, terminated, truncated, infos

    def render(self) -> tuple[Any, ...] | None:
        """One frame per env as ``render_mode`` asks (None without a render mode; "human" prints the lines)."""
        if self.render_mode is None:
            return None
        if not self.traces:
            raise RuntimeError("call reset() before render()")
        frames = tuple(trace.render(self.render_mode) for trace in self.traces)
        return None if self.render_mode == "human" else frames

    def close_extras(self, **kwargs: Any) -> None:
        """Nothing to release (one process, no workers)."""

    def _reset_envs(self, envs: np.ndarray) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Reset ``envs`` in the core, after a family's instance (and so the spaces) may have changed."""
        t = self.batch.template
        if t.observation_space != self.single_observation_space or t.action_space != self.single_action_space:
            self._set_spaces()
        obs, infos = self.batch.reset(envs)
        if self.render_mode is not None:
            if len(self.traces) != self.num_envs or any(tr.modalities != t.task.modalities for tr in self.traces):
                self.traces = [EpisodeTrace(t.task.modalities, t.n_iterations) for _ in range(self.num_envs)]
            for i in envs:
                self.traces[i].start(self.batch.episodes, i)
        return obs, infos

    def _seeds(self, seed: int | list[int | None] | None) -> list[int | None]:
        if seed is None:
            return [None] * self.num_envs
        if isinstance(seed, (int, np.integer)):
            return [int(seed) + i for i in range(self.num_envs)]
        seeds = list(seed)
        if len(seeds) != self.num_envs:
            raise ValueError(f"reset(seed=[...]) needs one seed per env ({self.num_envs}), got {len(seeds)}")
        return seeds

    def _reset_mask(self, mask: Any) -> np.ndarray:
        if mask is None:
            return np.ones(self.num_envs, dtype=bool)
        if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.shape != (self.num_envs,):
            raise ValueError(f"options['reset_mask'] must be a bool numpy array of shape ({self.num_envs},), "
                             f"got {mask!r}")
        if not mask.any():
            raise ValueError("options['reset_mask'] must have at least one True entry")
        return mask

    def _observations(self, envs: np.ndarray, obs: np.ndarray) -> np.ndarray:
        """All N observations: ``obs`` for ``envs``, the current observation for the others."""
        out = np.stack([self.batch.episodes.observation(i) for i in range(self.num_envs)]).astype(np.float32)
        out[envs] = obs
        return out

    def _batched_infos(self, envs: np.ndarray, infos: list[dict[str, Any]]) -> dict[str, Any]:
        batched: dict[str, Any] = {}
        for i, info in zip(envs, infos, strict=True):
            batched = self._add_info(batched, info, int(i))
        return batched


def make_spec_vector_env(spec: str | Path, num_envs: int = 1, render_mode: str | None = None,
                         allow_task_import: bool = False, autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
                         **overrides: Any) -> DUSVectorEnv:
    """The vector entry point of every registered DUS id: ``num_envs`` envs of a spec file, learners batched.

    Args:
        spec: a spec file (a path, or the name of a shipped spec in envs/).
        num_envs: N.
        render_mode: None, "ansi" or "rgb_array".
        allow_task_import: the spec may name a ``module:function`` task (set by ``register_envs``).
        autoreset_mode: Gymnasium's ``AutoresetMode`` (default next-step, as ``SyncVectorEnv``).
        **overrides: any ``DUSEnv`` argument, merged into the spec key by key.

    Raises:
        ConfigError: the spec's learner cannot be batched (on-disk data, Adam, another method...); the
            message names ``vectorization_mode="sync"``, which runs N separate envs instead.
    """
    check_n_envs(num_envs)  # before the spec is read or anything is built
    config = spec_config(spec, overrides, str(spec), allow_task_import=allow_task_import)
    try:
        return DUSVectorEnv(num_envs, autoreset_mode=autoreset_mode, render_mode=render_mode,
                            **env_kwargs_of(config))
    except ConfigError as err:
        if "vectorised env" not in str(err):
            raise
        raise ConfigError(f"{err}; with gymnasium.make_vec pass vectorization_mode='sync' (N separate envs)") from err
