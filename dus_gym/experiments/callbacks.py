"""Hooks of a training run (``dus-gym run``, ``compare``, ``bench``), in the shape of SB3's callbacks.

Each public ``on_*`` method does the bookkeeping and calls the matching ``_on_*`` hook, which a
subclass overrides; ``_on_iteration`` returns False to stop the run (it then ends as if its budget
were the iterations done). A callback reads the run through ``self.run``
(:class:`~dus_gym.experiments.training.TrainingRun`). Built in: a progress bar, TensorBoard
scalars and the run checkpoint; ``run_training(..., callbacks=[...])`` adds a user's own.
"""

from __future__ import annotations

from collections.abc import Sequence

from tqdm.auto import tqdm

from dus_gym.core.checkpoint import save_run_checkpoint
from dus_gym.experiments.training import TrainingRun


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
