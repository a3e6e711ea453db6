"""A full training run with any sampler: the loop, its callbacks (progress, TensorBoard, checkpoints) and the results.

The run folder receives ``config.yaml`` (the resolved configuration), ``results.json``,
``counts.npy`` (the count history, which the ``schedule`` sampler replays), ``learner.pt`` and
``tb/``; while the run is going, ``checkpoint.pt`` (see :mod:`dus_gym.core.checkpoint`).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from dus_gym.core.checkpoint import load_run_checkpoint
from dus_gym.core.config import MAX_SHOWN, RunConfig
from dus_gym.core.files import write_bytes_atomic, write_text_atomic
from dus_gym.core.learner import Evaluation
from dus_gym.experiments.callbacks import (
    CallbackList,
    CheckpointCallback,
    ProgressBarCallback,
    RunCallback,
    TensorBoardCallback,
)
from dus_gym.experiments.training import CHECKPOINT_NAME, DivergedError, TrainingRun
from dus_gym.samplers import Sampler, make_sampler
from dus_gym.tasks import Task, make_task

__all__ = ["CHECKPOINT_NAME", "DivergedError", "RunResult", "check_resumable", "run_training", "save_counts"]


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


def check_resumable(run_dir: str | Path) -> None:
    """Raise a ValueError when the run in ``run_dir`` has already finished (nothing to resume)."""
    if (Path(run_dir) / "results.json").is_file():
        raise ValueError(f"the run in {run_dir} has already finished (results.json exists); nothing to resume")


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
        callbacks: more hooks, called after the built-in ones (:class:`~dus_gym.experiments.callbacks.RunCallback`).
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
    if run.run_dir is not None:
        learner.save(run.run_dir / "learner.pt")
        save_counts(run.run_dir / "counts.npy", history)
        write_text_atomic(run.run_dir / "results.json", json.dumps(summary, indent=2))
        run.checkpoint_path.unlink(missing_ok=True)  # the run is complete: learner.pt and results.json hold it
    return RunResult(summary, test, history, cmd_history)
