"""DUSEnv: one multimodal training run as a Gymnasium episode (the env contract is in docs/env.md)."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.envs.registration import EnvSpec

from dus_gym.core.backend import LearnerBackend
from dus_gym.core.config import Budget, CMDConfig, ConfigError, EnvConfig, FamilyConfig, LearnerConfig, from_dict
from dus_gym.core.discrepancy import CMDMonitor
from dus_gym.core.episode import Episodes
from dus_gym.core.learner import Learner, LearnerGroup
from dus_gym.core.observation import ObservationLayout
from dus_gym.envs.registration import env_kwargs_of, spec_config
from dus_gym.envs.render import RENDER_FPS, RENDER_MODES, EpisodeTrace, check_render_mode
from dus_gym.samplers.action import CountsAction
from dus_gym.tasks import Task, cached_task
from dus_gym.tasks.families import TaskFamily, check_reset_options


class DUSEnv(gym.Env[np.ndarray, np.ndarray]):
    """Choose how many samples of each modality the learner trains on.

    ## Description

    An episode is one training run of a multimodal learner (encoders, unimodal heads, fusion head;
    docs/method.md) on a task, from a fresh start (or a saved learner checkpoint), for a budget of
    ``n_iterations`` learner iterations. At each step the agent picks per-modality sample counts;
    the learner then runs K = ``iterations_per_step`` iterations with them while the CMD monitor
    follows every iteration.

    ## Action Space

    Samples per modality (``action_type``; see ``dus_gym.samplers.action.CountsAction``):

    | action_type | space | counts |
    |---|---|---|
    | box (default) | ``Box(-1, 1, (M,))`` | n = round(n_min + (a + 1) / 2 (n_max - n_min)), default 8 to 256 |
    | multidiscrete | ``MultiDiscrete([L] * M)`` | ``count_levels[a]`` (default 8, 16, ..., 256) |
    | allocation | ``Box(-1, 1, (slots,))`` | M x B split by softmax(temperature a), n_min each |
    | strength | ``Box(-1, 1, (1,))`` | M x B split by softmax(-alpha d_t) at every iteration, |
    |  |  | alpha = max_alpha (a + 1) / 2 (the DUS heuristic at the chosen sharpness) |

    With ``observation="modalities"``, ``slots`` is ``max_modalities`` and entries past M are ignored
    (``info["n_modalities"]`` is M on a family env, at reset and at every step).

    ## Observation Space

    ``observation="modalities"`` (the family envs): one row of 8 features per modality slot (c, d,
    relative d, s, v, s - v, count / B, mask), then the progress and the fused validation accuracy;
    ``hide`` zeroes the "cmd" or "val" features (docs/env.md has the table). ``observation="cmd"``
    (default): ``Box((4M + 1,), float32)``, in modality order m = 0..M-1:

    | index     | observation                        | min | max         |
    |-----------|------------------------------------|-----|-------------|
    | 4m        | cumulative status c_t(m)           | 0   | 1           |
    | 4m + 1    | discrepancy d_t(m)                 | -1  | 1           |
    | 4m + 2    | last learning status s(m)          | 0   | 1           |
    | 4m + 3    | last count n(m) / B                | 0   | max count/B |
    | 4M        | training progress t / T            | 0   | 1           |

    ## Rewards

    ``reward_delta_weight`` x (fused validation accuracy now - at the previous step)
    - ``reward_cmd_weight`` x |CMD|, plus ``reward_terminal_weight`` x final fused validation
    accuracy at the last step. Components are in ``info`` (reward_delta, reward_cmd, reward_terminal).

    ## Starting State

    A learner initialised from a seed drawn from ``np_random`` (model init and data order), or the
    learner checkpoint ``start_checkpoint`` with a data order from that seed; CMD zero, counts B.

    ## Episode End

    Terminated when the learner has run ``n_iterations`` iterations (the last step may run fewer
    than K). Truncated when the loss becomes NaN/inf; the reward then is -``divergence_penalty``
    and ``info["diverged"]`` is True.

    ## Arguments

    | argument | default | meaning |
    |---|---|---|
    | task | "synthetic" | task name, "module:function", or a Task |
    | task_kwargs | {} | task builder kwargs |
    | learner | {} | LearnerConfig fields |
    | cmd | {} | CMDConfig fields (status from training batches or a probe) |
    | n_iterations / epochs | 800 / None | episode budget (epochs convert at B) |
    | iterations_per_step ... start_checkpoint | see EnvConfig | step size, action mapping, reward weights |

    ## Rendering

    ``render_mode="ansi"``: :meth:`render` returns the last step as one line (step, iteration,
    counts, c(m), d(m), fused validation accuracy); ``"human"``: that line is printed at every
    reset and step; ``"rgb_array"``: a 320x240 plot of d(m) and the counts over the iterations so
    far (``dus_gym.envs.render``), for video recorders.

    ## Version History

    - v0: first version.
    - v1 (SyntheticFamily-v1, MFeatFamily-v1): the strength action; MFeatFamily-v1 holds out by view set.
    """

    metadata: dict[str, Any] = {"render_modes": list(RENDER_MODES), "render_fps": RENDER_FPS}

    def __init__(
        self,
        task: str | Task = "synthetic",
        task_kwargs: dict[str, Any] | None = None,
        learner: dict[str, Any] | LearnerConfig | None = None,
        cmd: dict[str, Any] | CMDConfig | None = None,
        n_iterations: int | None = 800,
        epochs: float | None = None,
        family: dict[str, Any] | FamilyConfig | None = None,
        render_mode: str | None = None,
        **env_kwargs: Any,
    ) -> None:
        check_render_mode(render_mode)
        self.render_mode = render_mode
        self._spec: EnvSpec | None = None
        self.effective_kwargs: dict[str, Any] | None = None
        """The resolved settings this env was made with (set by :func:`make_spec_env`; they go into ``spec.kwargs``)."""
        self.learner_config = learner if isinstance(learner, LearnerConfig) else from_dict(
            LearnerConfig, learner or {}, "learner")
        self.cmd_config = cmd if isinstance(cmd, CMDConfig) else from_dict(CMDConfig, cmd or {}, "cmd")
        self.config = from_dict(EnvConfig, env_kwargs, "env")
        self.budget = Budget(n_iterations, epochs)
        self.probe_size = self.cmd_config.probe_size if self.cmd_config.source == "probe" else 0
        self.family: TaskFamily | None = None
        if family is not None:
            if isinstance(task, Task):
                raise ValueError("a task family needs the task's name (or module:function), not a Task object")
            family = family if isinstance(family, FamilyConfig) else from_dict(FamilyConfig, family, "family")
            if self.config.observation != "modalities" or self.config.max_modalities is None:
                raise ConfigError("a task family needs env.observation 'modalities' and env.max_modalities (the "
                                  "observation and the action must fit every instance)")
            self.family = TaskFamily.from_config(task, task_kwargs or {}, family)
            self.pool = self.family.pool(self.config.instances)
            if not self.pool:
                raise ConfigError(f"the family has no '{self.config.instances}' instances")
            self.instance: int | None = None
            self._use(self._instance_task(self.pool[0]))
        else:
            self.instance = None
            self._use(task if isinstance(task, Task) else cached_task(task, **(task_kwargs or {})))
        self.action_space = self.actions.space
        low, high = self.layout.bounds()
        self.observation_space = spaces.Box(low, high, dtype=np.float32)

    def _use(self, task: Task) -> None:
        """Train on ``task`` from the next episode: its learner, budget, action mapping and observation."""
        self.task = task
        B, M = self.learner_config.batch_size, len(task.modalities)
        self.n_iterations = self.budget.iterations(len(task.splits["train"]) - self.probe_size, B)
        self.n_modalities = M
        self.actions = CountsAction.of(self.config, M, B)
        self.layout = ObservationLayout.of(self.config, M, B, self.actions.max_count)
        self.episodes = self.make_episodes(LearnerGroup(task, self.learner_config, 1, probe_size=self.probe_size))
        self.trace = EpisodeTrace(task.modalities, self.n_iterations)

    def _instance_task(self, instance: int) -> Task:
        task = self.family.make(instance)
        if len(task.modalities) > self.config.max_modalities:
            raise ConfigError(f"instance {instance} of the family has {len(task.modalities)} modalities, more than "
                              f"env.max_modalities = {self.config.max_modalities}")
        return task

    def make_episodes(self, learners: LearnerBackend) -> Episodes:
        """Episodes with this env's settings on ``learners`` (one here; N in :class:`VecDUSEnv`)."""
        return Episodes(learners, self.task.modalities, self.learner_config.batch_size, self.n_iterations,
                        self.cmd_config.window, self.layout, self.config)

    @property
    def spec(self) -> EnvSpec | None:
        """The env's Gymnasium spec; marked nondeterministic whenever the learner may run on a GPU.

        ``gymnasium.make`` sets the registered spec with the caller's overrides merged in; its
        ``kwargs`` then hold the effective settings (the spec file's, with the overrides merged in:
        task, learner, CMD, budget and env settings), so ``gymnasium.make(env.spec)`` makes the same
        env and a log of ``env.spec.kwargs`` says what ran. A spec registered for the CPU but
        overridden to ``learner.device=cuda`` (or ``auto``) is nondeterministic, as a spec registered
        for a GPU is (cuDNN and cuBLAS are not bit-reproducible).
        """
        return self._spec

    @spec.setter
    def spec(self, value: EnvSpec | None) -> None:
        if value is not None and self.learner_config.device != "cpu" and not value.nondeterministic:
            value = replace(value, nondeterministic=True)
        if value is not None and self.effective_kwargs is not None:
            value = replace(value, kwargs={**value.kwargs, **self.effective_kwargs})
        self._spec = value

    @property
    def learner(self) -> Learner:
        """The learner of the current episode (after :meth:`reset`)."""
        return self.episodes.learners.learner(0)

    @property
    def monitor(self) -> CMDMonitor:
        """The CMD monitor of the current episode."""
        return self.episodes.monitors[0]

    @property
    def settings(self) -> dict[str, Any]:
        """What a policy needs to act like in this env elsewhere (saved with a trained policy)."""
        return {"task": self.task.name, "modalities": list(self.task.modalities),
                "batch_size": self.learner_config.batch_size, "n_iterations": self.n_iterations,
                "family": self.family is not None, "cmd": asdict(self.cmd_config), "env": asdict(self.config)}

    def instance_info(self) -> dict[str, Any]:
        """The current instance of a family; {} without.

        Its index, held out or not, its task-kwargs overrides, and its number of modalities M (action
        entries past M are ignored).
        """
        return family_instance_info(self.family, self.instance, len(self.task.modalities))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Start a new training run; ``seed`` reseeds model initialisation and data order.

        With a task family, the instance is ``options["instance"]`` (any instance, held out or not) or
        drawn from the env's pool (``instances``: "train" by default) with the env's ``np_random``.
        """
        self._check_open()
        check_reset_options(options, self.family)
        super().reset(seed=seed)
        if self.family is not None:
            chosen = (options or {}).get("instance")
            instance = int(self.np_random.choice(self.pool)) if chosen is None else int(chosen)
            if instance != self.instance:
                self._use(self._instance_task(instance))
                self.instance = instance
        elif options and "instance" in options:
            raise ValueError("reset(options={'instance': ...}) needs a family env")
        learner_seed = int(self.np_random.integers(0, 2**31 - 1))
        self.episodes.start(0, learner_seed, checkpoint=self.config.start_checkpoint)
        self.episodes.evaluate([0])
        info = {"val_acc": float(self.episodes.score[0]), "learner_seed": learner_seed, **self.instance_info()}
        self.trace.start(self.episodes, 0)
        if self.render_mode == "human":
            self.render()
        return self.episodes.observation(0), info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Run K learner iterations with the counts of ``action``."""
        self._check_open()
        counts = self.actions.to_counts(action)  # validates the action
        if self.actions.reacts:
            actions = self.actions
            obs, rewards, terminated, truncated, infos = self.episodes.step(
                lambda d: actions.to_counts(action, d[0])[None])
        else:
            obs, rewards, terminated, truncated, infos = self.episodes.step(counts[None])
        info = infos[0]
        if self.instance is not None:
            info["instance"], info["n_modalities"] = self.instance, len(self.task.modalities)
        self.trace.add(self.episodes, 0)
        if self.render_mode == "human":
            self.render()
        return obs[0], float(rewards[0]), bool(terminated[0]), bool(truncated[0]), info

    def close(self) -> None:
        """Release the env; a closed env refuses :meth:`reset` and :meth:`step`."""
        self._closed = True
        super().close()

    def _check_open(self) -> None:
        if getattr(self, "_closed", False):
            raise RuntimeError("this DUSEnv is closed; make a new one (gymnasium.make)")

    def render(self) -> str | np.ndarray | None:  # type: ignore[override]
        """The current episode as ``render_mode`` asks: one text line ("ansi") or a plot ("rgb_array")."""
        return self.trace.render(self.render_mode)

    def info_keywords(self) -> tuple[str, ...]:
        """The info keys a Monitor should record at the end of an episode."""
        return self.episodes.info_keywords()


def family_instance_info(family: TaskFamily | None, instance: int | None, n_modalities: int) -> dict[str, Any]:
    """The info keys of a family's ``instance`` (index, held out or not, its task-kwargs overrides, M); {} without."""
    if family is None or instance is None:
        return {}
    return {"instance": instance, "held_out": instance in family.held_out,
            "instance_params": dict(family.instances[instance]), "n_modalities": n_modalities}


def make_spec_env(spec: str | Path, render_mode: str | None = None, allow_task_import: bool = False,
                  **overrides: Any) -> DUSEnv:
    """The entry point of every registered DUS id: the env of a spec file with ``overrides`` merged in key by key.

    Args:
        spec: a spec file (a path, or the name of a shipped spec in envs/).
        render_mode: Gymnasium's render mode.
        allow_task_import: the spec may name a ``module:function`` task (set by ``register_envs``).
        **overrides: any ``DUSEnv`` argument, e.g. ``n_iterations=400`` or ``learner={"lr": 0.1}``.
    """
    config = spec_config(spec, overrides, str(spec), allow_task_import=allow_task_import)
    kwargs = env_kwargs_of(config)
    env = DUSEnv(render_mode=render_mode, **kwargs)
    env.effective_kwargs = kwargs
    return env
