"""A full training run with any sampler: the loop, TensorBoard scalars and the results file."""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from dus_gym.checkpoint import load_run_checkpoint, rng_state, save_run_checkpoint, set_rng_state
from dus_gym.cmd import CMDMonitor, cmd_observation
from dus_gym.config import RunConfig, to_dict
from dus_gym.learner import Evaluation, Learner
from dus_gym.samplers import Sampler, SamplerState, make_sampler
from dus_gym.tasks import Task, make_task

CHECKPOINT_NAME = "checkpoint.pt"
"""The run checkpoint inside a run folder (removed once results.json is written)."""


class DivergedError(RuntimeError):
    """The learner's loss became NaN or inf."""


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


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes it private; results are meant to be read by others
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_counts(path: Path, counts: np.ndarray) -> None:
    """Write the (iterations, M) count history as .npy (atomically); a ``schedule`` sampler replays it."""
    tmp = path.with_name(f".{path.name}.tmp.npy")
    np.save(tmp, counts)
    os.replace(tmp, path)


def sampler_state(learner: Learner, monitor: CMDMonitor, counts: np.ndarray, n_iterations: int) -> SamplerState:
    """What a sampler sees before the learner's next iteration."""
    progress = learner.iteration / n_iterations
    B = learner.config.batch_size
    return SamplerState(
        iteration=learner.iteration,
        n_iterations=n_iterations,
        batch_size=B,
        cumulative=monitor.cumulative.copy(),
        discrepancy=monitor.discrepancy.copy(),
        status=monitor.status.copy(),
        counts=counts.copy(),
        observation=cmd_observation(monitor, counts, B, progress),
    )


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
) -> RunResult:
    """Train ``config.task`` with ``config.sampler`` for the budget; log, checkpoint and write results.

    Every ``config.checkpoint_every`` iterations the whole run state goes to ``run_dir/checkpoint.pt``
    (see :mod:`dus_gym.checkpoint`); with ``resume`` the run continues from that file and ends
    exactly as an uninterrupted run would (on CPU, same seed).

    Args:
        config: the resolved run configuration.
        run_dir: folder for config.yaml, checkpoint.pt, results.json and TensorBoard events (None: write nothing).
        task: an already built task (saves rebuilding it across seeds); built from config if None.
        sampler: an already built sampler; built from config if None.
        progress: show a progress bar.
        probe: fit the linear probe of every encoder at the end (``probe_acc``; several seconds on CPU).
        resume: continue from ``run_dir/checkpoint.pt`` (start afresh when there is none yet).

    Raises:
        DivergedError: the loss became NaN/inf; results are not written, the last checkpoint is kept.
        ValueError: ``resume`` on a finished run, or a checkpoint of another version or configuration.
    """
    if resume and run_dir is None:
        raise ValueError("resuming needs the run folder")
    if resume:
        check_resumable(run_dir)
    task = task if task is not None else make_task(config.task, **config.task_kwargs)
    probe_size = config.cmd.probe_size if config.cmd.source == "probe" else 0
    learner = Learner(task, config.learner, seed=config.seed, probe_size=probe_size)
    M, B = len(task.modalities), config.learner.batch_size
    sampler = sampler if sampler is not None else make_sampler(config.sampler, B, M, **config.sampler_kwargs)
    sampler.reset()
    monitor = CMDMonitor(M, window=config.cmd.window)
    n_iterations = config.budget(learner.n_train)
    counts = np.full(M, B, dtype=np.int64)
    history = np.zeros((n_iterations, M), dtype=np.int64)
    cmd_history = np.zeros((n_iterations, M))
    last_status = np.zeros(M)
    val_curve: list[dict[str, Any]] = []
    done, elapsed = 0, 0.0
    checkpoint = Path(run_dir) / CHECKPOINT_NAME if run_dir is not None else None
    config_dict = to_dict(config)
    if resume and checkpoint.is_file():
        state = load_run_checkpoint(checkpoint, config_dict, learner.device)
        learner.load_state_dict(state["learner"])
        sampler.load_state_dict(state["sampler"])
        monitor.load_state_dict(state["monitor"])
        done, elapsed = int(state["iteration"]), float(state["train_seconds"])
        counts = state["counts"].numpy().astype(np.int64)
        history[:done] = state["history"].numpy()
        cmd_history[:done] = state["cmd_history"].numpy()
        last_status = state["last_status"].numpy().astype(np.float64)
        val_curve = list(state["val_curve"])
        set_rng_state(state["rng"])

    def save_checkpoint(t: int) -> None:
        save_run_checkpoint(checkpoint, {
            "iteration": t, "train_seconds": elapsed + time.perf_counter() - start,
            "learner": learner.state_dict(), "sampler": sampler.state_dict(), "monitor": monitor.state_dict(),
            "counts": torch.from_numpy(counts.copy()), "history": torch.from_numpy(history[:t].copy()),
            "cmd_history": torch.from_numpy(cmd_history[:t].copy()),
            "last_status": torch.from_numpy(last_status.copy()), "val_curve": val_curve, "rng": rng_state(),
        }, config_dict)

    writer = None
    if run_dir is not None:
        run_dir = Path(run_dir)
        if not resume:
            write_atomic(run_dir / "config.yaml", yaml.safe_dump(config_dict, sort_keys=False))
        if config.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops the events a killed run wrote after its last checkpoint
            writer = SummaryWriter(log_dir=str(run_dir / "tb"), purge_step=done + 1 if done else None)

    start = time.perf_counter()
    bar = tqdm(total=n_iterations, initial=done,
               desc=f"{task.name}/{config.learner.method}/{sampler.name}/seed{config.seed}",
               disable=not progress, leave=False, dynamic_ncols=True)
    try:
        for t in range(done, n_iterations):
            counts = np.asarray(sampler.counts(sampler_state(learner, monitor, counts, n_iterations)), dtype=np.int64)
            stats = learner.step(counts)
            if not stats.finite:
                kept = (f"; the last good checkpoint ({_checkpoint_iteration(checkpoint)}) is kept in {checkpoint}"
                        if checkpoint is not None and checkpoint.is_file() else "")
                raise DivergedError(
                    f"the loss became {stats.loss} at iteration {t + 1} ({task.name}, {sampler.name}, "
                    f"seed {config.seed}); lower learner.lr or check the data{kept}"
                )
            counts = stats.counts  # what the learner used (after quantisation)
            history[t] = counts
            if probe_size:
                status = learner.probe_status()
            else:  # a modality that drew no sample keeps its last status
                status = np.where(np.isnan(stats.status), last_status, stats.status)
            last_status = status
            monitor.update(status)
            cmd_history[t] = monitor.discrepancy
            bar.update(1)
            if writer is not None and ((t + 1) % config.log_every == 0 or t + 1 == n_iterations):
                _log_iteration(writer, t + 1, task.modalities, monitor, stats, learner)
            if (t + 1) % config.eval_every == 0 or t + 1 == n_iterations:
                val = learner.evaluate("val")
                val_curve.append({"iteration": t + 1, "fused_acc": val.fused["acc"],
                                  **{f"acc/{m}": val.unimodal[m]["acc"] for m in task.modalities}})
                bar.set_postfix(val_acc=f"{val.fused['acc']:.3f}", gap=f"{monitor.gap:.3f}")
                if writer is not None:
                    writer.add_scalar("val/fused_acc", val.fused["acc"], t + 1)
                    for m in task.modalities:
                        writer.add_scalar(f"val/acc/{m}", val.unimodal[m]["acc"], t + 1)
            if checkpoint is not None and config.checkpoint_every and (t + 1) % config.checkpoint_every == 0 \
                    and t + 1 < n_iterations:
                if writer is not None:
                    writer.flush()  # events up to the checkpoint are on disk before it
                save_checkpoint(t + 1)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    train_time = elapsed + time.perf_counter() - start

    test = learner.evaluate("test")
    summary = {
        "task": task.name,
        "modalities": list(task.modalities),
        "method": config.learner.method,
        "sampler": sampler.name,
        "seed": config.seed,
        "iterations": n_iterations,
        "epochs": learner.planner.epochs_done,
        "samples_seen": dict(zip(task.modalities, learner.samples_seen.tolist(), strict=True)),
        "mean_counts": dict(zip(task.modalities, history.mean(0).tolist(), strict=True)),
        "test": {"fused": test.fused, **{m: test.unimodal[m] for m in task.modalities}},
        "probe_acc": {m: learner.linear_probe(m) for m in task.modalities} if probe else None,
        "final_cmd": dict(zip(task.modalities, monitor.discrepancy.tolist(), strict=True)),
        "final_gap": monitor.gap,
        "val_curve": val_curve,
        "train_seconds": train_time,
    }
    if run_dir is not None:
        learner.save(run_dir / "learner.pt")
        save_counts(run_dir / "counts.npy", history)
        write_atomic(run_dir / "results.json", json.dumps(summary, indent=2))
        checkpoint.unlink(missing_ok=True)  # the run is complete: learner.pt and results.json hold it
    return RunResult(summary, test, history, cmd_history)


def _checkpoint_iteration(path: Path) -> str:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)["state"]
        return f"iteration {int(state['iteration'])}"
    except Exception:  # a message helper: an unreadable file is still worth naming
        return "iteration unknown"


def _log_iteration(writer: Any, step: int, modalities: tuple[str, ...], monitor: CMDMonitor,
                   stats: Any, learner: Learner) -> None:
    writer.add_scalar("imbalance/gap", monitor.gap, step)
    writer.add_scalar("learner/loss", stats.loss, step)
    writer.add_scalar("learner/loss_fusion", stats.fusion_loss, step)
    writer.add_scalar("learner/epoch", learner.planner.epochs_done, step)
    for k, m in enumerate(modalities):
        writer.add_scalar(f"imbalance/cmd/{m}", monitor.discrepancy[k], step)
        writer.add_scalar(f"imbalance/cumulative/{m}", monitor.cumulative[k], step)
        writer.add_scalar(f"imbalance/status/{m}", monitor.status[k], step)
        writer.add_scalar(f"sampler/count/{m}", stats.counts[k], step)
        writer.add_scalar(f"learner/loss/{m}", stats.unimodal_losses[k], step)
