"""A full training run with any sampler: the run in progress, the loop, its callbacks and the results.

:class:`TrainingRun` is one run in progress (the learner, its CMD episode, the sampler, and what the
run has recorded so far): what :func:`run_training` drives one iteration at a time, what the run
callbacks read and what a run checkpoint saves (:meth:`TrainingRun.state_dict`).

The callbacks are hooks in the shape of SB3's: each public ``on_*`` method of :class:`RunCallback`
does the bookkeeping and calls the matching ``_on_*`` hook, which a subclass overrides;
``_on_iteration`` returns False to stop the run (it then ends as if its budget were the iterations
done). A callback reads the run through ``self.run``. Built in: a progress bar, TensorBoard scalars
and the run checkpoint; ``run_training(..., callbacks=[...])`` adds a user's own.

The run folder receives ``config.yaml`` (the resolved configuration), ``results.json``,
``counts.npy`` (the count history, which the ``schedule`` sampler replays), ``learner.pt`` and
``tb/``; while the run is going, ``checkpoint.pt`` (see :mod:`dus_gym.core.checkpoint`).
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from dus_gym.core.backend import BatchedIterationStats
from dus_gym.core.checkpoint import load_run_checkpoint, rng_state, save_run_checkpoint, set_rng_state
from dus_gym.core.config import MAX_SHOWN, RunConfig, to_dict
from dus_gym.core.discrepancy import CMDMonitor
from dus_gym.core.episode import Episodes
from dus_gym.core.files import write_bytes_atomic, write_text_atomic
from dus_gym.core.learner import Evaluation, Learner, LearnerGroup
from dus_gym.core.metrics import balance_degree
from dus_gym.core.observation import ObservationLayout
from dus_gym.error import DivergedError
from dus_gym.experiments.resume import check_resumable
from dus_gym.samplers import Sampler, SamplerState, make_sampler
from dus_gym.samplers.action import CountsAction
from dus_gym.tasks import Task, make_task

__all__ = ["CHECKPOINT_NAME", "CallbackList", "CheckpointCallback", "DivergedError", "ProgressBarCallback",
           "RunCallback", "RunResult", "TensorBoardCallback", "TrainingRun", "run_training",
           "save_counts"]


CHECKPOINT_NAME = "checkpoint.pt"
"""The run checkpoint inside a run folder (removed once results.json is written)."""


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


class RunCallback:
    """Base class of the hooks of a training run."""

    def __init__(self) -> None:
        self.run: TrainingRun | None = None

    def init_callback(self, run: TrainingRun) -> None:
        """Attach to ``run`` (before it starts)."""
        self.run = run
        self._init_callback()

    def _init_callback(self) -> None:
        pass

    def on_run_start(self) -> None:
        """Called once, before the first iteration (of this process, after a resume)."""
        self._on_run_start()

    def _on_run_start(self) -> None:
        pass

    def on_iteration(self) -> bool:
        """Called after every iteration (and its validation, when due); False stops the run."""
        return self._on_iteration()

    def _on_iteration(self) -> bool:
        return True

    def on_run_end(self) -> None:
        """Called once when the loop ends, normally or by an exception."""
        self._on_run_end()

    def _on_run_end(self) -> None:
        pass

    def flush(self) -> None:
        """Write what is buffered (the checkpoint callback calls it before writing a checkpoint)."""


class CallbackList(RunCallback):
    """Several callbacks called in order (the run stops when one of them returns False)."""

    def __init__(self, callbacks: Sequence[RunCallback]) -> None:
        super().__init__()
        self.callbacks = list(callbacks)

    def _init_callback(self) -> None:
        for callback in self.callbacks:
            callback.init_callback(self.run)

    def _on_run_start(self) -> None:
        for callback in self.callbacks:
            callback.on_run_start()

    def _on_iteration(self) -> bool:
        go_on = True
        for callback in self.callbacks:
            go_on = callback.on_iteration() and go_on
        return go_on

    def _on_run_end(self) -> None:
        for callback in self.callbacks:
            callback.on_run_end()

    def flush(self) -> None:
        """Flush every callback."""
        for callback in self.callbacks:
            callback.flush()


class ProgressBarCallback(RunCallback):
    """A tqdm bar over the run's iterations, with the last validation accuracy and |CMD|."""

    def _on_run_start(self) -> None:
        run = self.run
        self.bar = tqdm(total=run.n_iterations, initial=run.iteration,
                        desc=f"{run.task.name}/{run.config.learner.method}/{run.sampler.name}/seed{run.config.seed}",
                        leave=False, dynamic_ncols=True)

    def _on_iteration(self) -> bool:
        self.bar.update(1)
        if self.run.validation is not None:
            self.bar.set_postfix(val_acc=f"{self.run.validation.fused['acc']:.3f}", gap=f"{self.run.monitor.gap:.3f}")
        return True

    def _on_run_end(self) -> None:
        self.bar.close()


class TensorBoardCallback(RunCallback):
    """TensorBoard scalars under ``imbalance/``, ``sampler/``, ``learner/`` and ``val/`` (see the README).

    Args:
        log_every: write the iteration's scalars every this many iterations (and at the last one).
    """

    def __init__(self, log_every: int) -> None:
        super().__init__()
        self.log_every = log_every

    def _on_run_start(self) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imports TensorBoard only when a run logs

        run = self.run
        # purge_step drops the events a killed run wrote after its last checkpoint
        self.writer = SummaryWriter(log_dir=str(run.run_dir / "tb"),
                                    purge_step=run.iteration + 1 if run.iteration else None)

    def _on_iteration(self) -> bool:
        run, writer = self.run, self.writer
        t = run.iteration
        if t % self.log_every == 0 or t == run.n_iterations:
            stats, monitor = run.stats, run.monitor
            writer.add_scalar("imbalance/gap", monitor.gap, t)
            writer.add_scalar("learner/loss", stats.loss[0], t)
            writer.add_scalar("learner/loss_fusion", stats.fusion_loss[0], t)
            writer.add_scalar("learner/epoch", run.learner.planner.epochs_done, t)
            for k, m in enumerate(run.task.modalities):
                writer.add_scalar(f"imbalance/cmd/{m}", monitor.discrepancy[k], t)
                writer.add_scalar(f"imbalance/cumulative/{m}", monitor.cumulative[k], t)
                writer.add_scalar(f"imbalance/status/{m}", monitor.status[k], t)
                writer.add_scalar(f"sampler/count/{m}", stats.counts[0, k], t)
                writer.add_scalar(f"learner/loss/{m}", stats.unimodal_losses[0, k], t)
        if run.validation is not None:
            writer.add_scalar("val/fused_acc", run.validation.fused["acc"], t)
            for m in run.task.modalities:
                writer.add_scalar(f"val/acc/{m}", run.validation.unimodal[m]["acc"], t)
        return True

    def flush(self) -> None:
        """Put the events so far on disk."""
        self.writer.flush()

    def _on_run_end(self) -> None:
        self.writer.close()


class CheckpointCallback(RunCallback):
    """The whole run state to ``<run>/checkpoint.pt`` every ``every`` iterations (not at the last one).

    The other callbacks are flushed first, so that the events up to the checkpoint are on disk
    before it (a resumed run purges what a killed one wrote after it).

    Args:
        every: the checkpoint period in iterations.
        flush: what to flush before writing (the run's callback list).
    """

    def __init__(self, every: int, flush: RunCallback | None = None) -> None:
        super().__init__()
        self.every = every
        self.to_flush = flush

    def _on_iteration(self) -> bool:
        run = self.run
        if run.iteration % self.every == 0 and run.iteration < run.n_iterations:
            if self.to_flush is not None:
                self.to_flush.flush()
            save_run_checkpoint(run.checkpoint_path, run.state_dict(), run.config_dict)
        return True


@dataclass
class RunResult:
    """The outcome of one run (``summary`` is what goes into results.json).

    Args:
        summary: JSON-serialisable metrics and facts of the run.
        test: the final evaluation on the test split (with probabilities, for late fusion).
        counts: (iterations, M) counts chosen at every iteration.
        cmd: (iterations, M) the discrepancy d(m) after every iteration.
    """

    summary: dict[str, Any]
    test: Evaluation
    counts: np.ndarray = field(repr=False)
    cmd: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 0)))


def save_counts(path: Path, counts: np.ndarray) -> None:
    """Write the (iterations, M) count history as .npy (atomically); a ``schedule`` sampler replays it."""
    buffer = io.BytesIO()
    np.save(buffer, counts)
    write_bytes_atomic(path, buffer.getvalue())


def run_training(
    config: RunConfig,
    run_dir: Path | None = None,
    task: Task | None = None,
    sampler: Sampler | None = None,
    progress: bool = True,
    probe: bool = True,
    resume: bool = False,
    callbacks: Sequence[RunCallback] = (),
    new_lr: bool = False,
) -> RunResult:
    """Train ``config.task`` with ``config.sampler`` for the budget; log, checkpoint and write results.

    Every ``config.checkpoint_every`` iterations the whole run state goes to ``run_dir/checkpoint.pt``
    (see :mod:`dus_gym.core.checkpoint`); with ``resume`` the run continues from that file and ends
    exactly as an uninterrupted run would (on CPU, same seed).

    Args:
        config: the resolved run configuration.
        run_dir: folder for config.yaml, checkpoint.pt, results.json and TensorBoard events (None: write nothing).
        task: an already built task (saves rebuilding it across seeds); built from config if None.
        sampler: an already built sampler; built from config if None.
        progress: show a progress bar.
        probe: fit the linear probe of every encoder at the end (``probe_acc``; several seconds on CPU).
        resume: continue from ``run_dir/checkpoint.pt`` (start afresh when there is none yet).
        callbacks: more hooks, called after the built-in ones (:class:`RunCallback`).
        new_lr: with ``resume``, the checkpoint may hold another learning rate: continue with ``config.learner.lr``
            (after a divergence: ``dus-gym run --resume RUN --lr LR``).

    Raises:
        DivergedError: the loss became NaN/inf; results are not written, the last checkpoint is kept.
        ValueError: ``resume`` on a finished run, or a checkpoint of another version or configuration.
    """
    if resume and run_dir is None:
        raise ValueError("resuming needs the run folder")
    if resume:
        check_resumable(run_dir)
    task = task if task is not None else make_task(config.task, **config.task_kwargs)
    M, B = len(task.modalities), config.learner.batch_size
    sampler = sampler if sampler is not None else make_sampler(config.sampler, B, M, **config.sampler_kwargs)
    run = TrainingRun(config, task, sampler, run_dir)
    checkpoint = run.checkpoint_path
    if resume and checkpoint.is_file():
        state = load_run_checkpoint(checkpoint, run.config_dict, run.learner.device,
                                    may_differ=("learner.lr",) if new_lr else ())
        try:
            run.load_state_dict(state)
            if new_lr:
                run.learner.set_base_lr(config.learner.lr)
        except (KeyError, TypeError, AttributeError, IndexError, ValueError, RuntimeError) as err:
            raise ValueError(f"{checkpoint} is incomplete or damaged ({type(err).__name__}: {str(err)[:MAX_SHOWN]}); "
                             "delete it to start the run again") from err

    hooks: list[RunCallback] = [ProgressBarCallback()] if progress else []
    if run_dir is not None:
        if not resume:
            write_text_atomic(run.run_dir / "config.yaml", yaml.safe_dump(run.config_dict, sort_keys=False))
        if config.tensorboard:
            hooks.append(TensorBoardCallback(config.log_every))
    callback = CallbackList(hooks)
    if run_dir is not None and config.checkpoint_every:
        callback.callbacks.append(CheckpointCallback(config.checkpoint_every, flush=callback))
    callback.callbacks.extend(callbacks)
    callback.init_callback(run)
    callback.on_run_start()
    run.start_clock()
    try:
        while run.iteration < run.n_iterations:
            run.iterate()
            if not callback.on_iteration():
                break
    finally:
        callback.on_run_end()
    return _finish(run, probe)


def _finish(run: TrainingRun, probe: bool) -> RunResult:
    """Test the learner, write results.json, counts.npy and learner.pt, drop the checkpoint."""
    learner, task, modalities = run.learner, run.task, run.task.modalities
    train_time = run.train_seconds
    done = run.iteration
    history, cmd_history = run.history[:done], run.cmd_history[:done]
    test = learner.evaluate("test")
    summary = {
        "task": task.name,
        "modalities": list(modalities),
        "method": run.config.learner.method,
        "sampler": run.sampler.name,
        "seed": run.config.seed,
        "iterations": done,
        "optimizer_steps": learner.optimizer_steps,
        "epochs": learner.planner.epochs_done,
        "samples_seen": dict(zip(modalities, learner.samples_seen.tolist(), strict=True)),
        "flops_per_iteration": run.flops_per_iteration,
        "mean_counts": dict(zip(modalities, history.mean(0).tolist(), strict=True)),
        "test": {"fused": test.fused, **{m: test.unimodal[m] for m in modalities}},
        "probe_acc": {m: learner.linear_probe(m) for m in modalities} if probe else None,
        "shapley": learner.modality_shapley("test"),
        "final_cmd": dict(zip(modalities, run.monitor.discrepancy.tolist(), strict=True)),
        "final_gap": run.monitor.gap,
        "val_curve": run.val_curve,
        "train_seconds": train_time,
    }
    summary["balance"] = balance_degree(summary["shapley"])  # BalanceBenchmark's imbalance measure, as 1 - it
    if run.run_dir is not None:
        learner.save(run.run_dir / "learner.pt")
        save_counts(run.run_dir / "counts.npy", history)
        write_text_atomic(run.run_dir / "results.json", json.dumps(summary, indent=2))
        run.checkpoint_path.unlink(missing_ok=True)  # the run is complete: learner.pt and results.json hold it
    return RunResult(summary, test, history, cmd_history)
