"""A training run in progress: the learner, its CMD episode, the sampler, and what the run has recorded so far.

:class:`TrainingRun` is what :func:`dus_gym.experiments.run.run_training` drives one iteration at
a time, what the run callbacks read (:mod:`dus_gym.experiments.callbacks`) and what a run
checkpoint saves (:meth:`TrainingRun.state_dict`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from dus_gym.core.backend import BatchedIterationStats
from dus_gym.core.checkpoint import rng_state, set_rng_state
from dus_gym.core.config import RunConfig, to_dict
from dus_gym.core.discrepancy import CMDMonitor
from dus_gym.core.episode import Episodes
from dus_gym.core.learner import Evaluation, Learner, LearnerGroup
from dus_gym.core.observation import ObservationLayout
from dus_gym.samplers import Sampler, SamplerState
from dus_gym.samplers.action import CountsAction
from dus_gym.tasks import Task

CHECKPOINT_NAME = "checkpoint.pt"
"""The run checkpoint inside a run folder (removed once results.json is written)."""


class DivergedError(RuntimeError):
    """The learner's loss became NaN or inf."""


class TrainingRun:
    """One run of ``config.task`` with a sampler for the budget, one learner iteration at a time.

    Args:
        config: the resolved run configuration.
        task: the task (built once by the caller).
        sampler: the sampler (reset here).
        run_dir: the run folder (None: nothing is written; a checkpoint is never kept).
    """

    def __init__(self, config: RunConfig, task: Task, sampler: Sampler, run_dir: Path | None = None) -> None:
        self.config = config
        self.config_dict = to_dict(config)
        self.task = task
        self.sampler = sampler
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.probe_size = config.cmd.probe_size if config.cmd.source == "probe" else 0
        M, B = len(task.modalities), config.learner.batch_size
        group = LearnerGroup(task, config.learner, 1, probe_size=self.probe_size)
        group.reset_learner(0, config.seed)
        self.learner: Learner = group.learner(0)
        self.n_iterations = config.budget(self.learner.n_train)
        layout = ObservationLayout.of(config.env, M, B, CountsAction.of(config.env, M, B).max_count)
        self.episodes = Episodes(group, task.modalities, B, self.n_iterations, config.cmd.window, layout, config.env)
        self.episodes.started[0] = True
        sampler.reset()
        self.iteration = 0
        """Iterations done."""
        self.start_iteration = 0
        """Iterations done when this process took over (non-zero after a resume)."""
        self.history = np.zeros((self.n_iterations, M), dtype=np.int64)
        """Counts used at every iteration."""
        self.cmd_history = np.zeros((self.n_iterations, M))
        """The discrepancy d(m) after every iteration."""
        self.val_curve: list[dict[str, Any]] = []
        self.stats: BatchedIterationStats | None = None
        """The last iteration's stats (one row)."""
        self.validation: Evaluation | None = None
        """The validation of the last iteration, when it was evaluated (else None)."""
        self.flops: list[int] = []
        """FLOPs of the sampled iterations (the ``config.flops_every``-th, twice that, ...; forward and backward)."""
        self.elapsed = 0.0
        self._clock = time.perf_counter()

    @property
    def monitor(self) -> CMDMonitor:
        """The run's CMD monitor."""
        return self.episodes.monitors[0]

    @property
    def checkpoint_path(self) -> Path | None:
        """Where the run checkpoint goes (None without a run folder)."""
        return self.run_dir / CHECKPOINT_NAME if self.run_dir is not None else None

    @property
    def flops_per_iteration(self) -> float | None:
        """Mean FLOPs of the sampled iterations (None when none was counted)."""
        return float(np.mean(self.flops)) if self.flops else None

    def start_clock(self) -> None:
        """Start timing the training (the loop)."""
        self._clock = time.perf_counter()

    @property
    def train_seconds(self) -> float:
        """Training time so far (the time before a resume included)."""
        return self.elapsed + time.perf_counter() - self._clock

    def sampler_state(self) -> SamplerState:
        """What the sampler sees before the next iteration (scored on validation when the sampler asks)."""
        monitor = self.monitor
        every = self.sampler.validation_every
        if every and self.learner.iteration % every == 0:
            self.episodes.evaluate([0])
        return SamplerState(
            iteration=self.learner.iteration,
            n_iterations=self.n_iterations,
            batch_size=self.config.learner.batch_size,
            cumulative=monitor.cumulative.copy(),
            discrepancy=monitor.discrepancy.copy(),
            status=monitor.status.copy(),
            counts=self.episodes.counts[0].copy(),
            observation=self.episodes.observation(0),
            val_status=self.episodes.val_status[0].copy() if every else None,
            val_acc=float(self.episodes.score[0]) if every else None,
        )

    def iterate(self) -> None:
        """One iteration: the sampler decides, the learner steps, the CMD follows; validation when due.

        Raises:
            DivergedError: the loss became NaN/inf.
        """
        t = self.iteration
        counts = np.asarray(self.sampler.counts(self.sampler_state()), dtype=np.int64)
        every = self.config.flops_every
        if every and (t + 1) % every == 0 and not self.config.learner.compile:
            counter = FlopCounterMode(display=False)
            with counter:
                stats = self.episodes.iterate(counts[None])
            self.flops.append(int(counter.get_total_flops()))
        else:
            stats = self.episodes.iterate(counts[None])
        if not stats.finite[0]:
            path = self.checkpoint_path
            kept = (f"; the last good checkpoint ({_checkpoint_iteration(path)}) is kept in {path}"
                    if path is not None and path.is_file() else "")
            resume = (f": `dus-gym run --resume {self.run_dir} --lr LR` continues from it with learning rate LR"
                      if kept else "")
            raise DivergedError(f"the loss became {stats.loss[0]} at iteration {t + 1} ({self.task.name}, "
                                f"{self.sampler.name}, seed {self.config.seed}); lower learner.lr or check the data"
                                f"{kept}{resume}")
        self.stats = stats
        self.history[t] = stats.counts[0]  # what the learner used (after quantisation)
        self.cmd_history[t] = self.monitor.discrepancy
        self.iteration = t + 1
        self.validation = None
        if self.iteration % self.config.eval_every == 0 or self.iteration == self.n_iterations:
            self.validation = self.learner.evaluate("val")
            self.val_curve.append({"iteration": self.iteration, "fused_acc": self.validation.fused["acc"],
                                   **{f"acc/{m}": self.validation.unimodal[m]["acc"] for m in self.task.modalities}})

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to end as an uninterrupted one (see :mod:`dus_gym.core.checkpoint`)."""
        t = self.iteration
        return {
            "iteration": t, "train_seconds": self.train_seconds,
            "learner": self.learner.state_dict(), "sampler": self.sampler.state_dict(),
            "monitor": self.monitor.state_dict(), "counts": torch.from_numpy(self.episodes.counts[0].copy()),
            "history": torch.from_numpy(self.history[:t].copy()),
            "cmd_history": torch.from_numpy(self.cmd_history[:t].copy()),
            "last_status": torch.from_numpy(self.episodes.last_status[0].copy()), "val_curve": self.val_curve,
            "flops": list(self.flops),
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a state saved by :meth:`state_dict`."""
        self.learner.load_state_dict(state["learner"])
        self.sampler.load_state_dict(state["sampler"])
        self.monitor.load_state_dict(state["monitor"])
        t = int(state["iteration"])
        self.iteration = self.start_iteration = t
        self.elapsed = float(state["train_seconds"])
        self._clock = time.perf_counter()
        self.episodes.counts[0] = state["counts"].numpy().astype(np.int64)
        self.history[:t] = state["history"].numpy()
        self.cmd_history[:t] = state["cmd_history"].numpy()
        self.episodes.last_status[0] = state["last_status"].numpy().astype(np.float64)
        self.val_curve = list(state["val_curve"])
        self.flops = [int(f) for f in state.get("flops", [])]
        set_rng_state(state["rng"])


def _checkpoint_iteration(path: Path) -> str:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)["state"]
        return f"iteration {int(state['iteration'])}"
    except Exception:  # a message helper: an unreadable file is still worth naming
        return "iteration unknown"
