"""The multimodal learner: per-modality encoders and heads, a fusion head, one iteration at a time.

One iteration takes per-modality counts and follows the batch plan (docs/method.md); the method
(:mod:`dus_gym.core.methods`) forms the losses and gradients from the per-modality batches. The
default, ``unimodal-aux``: loss = CE(fusion) on the paired samples + sum_m w(m) CE(head_m) on
modality m's own samples, with w(m) = n(m)/B ("scaled", the default) or 1 ("mean"). No Gymnasium here.

:class:`LearnerGroup` puts N independent learners behind the batched-learner interface
(:class:`dus_gym.core.backend.LearnerBackend`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from dus_gym.core.backend import BatchedIterationStats, IterationStats
from dus_gym.core.batch_plan import BatchPlanner
from dus_gym.core.checkpoint import read_learner_checkpoint, write_learner_checkpoint
from dus_gym.core.config import LearnerConfig
from dus_gym.core.loader import SampleDataset, WindowLoader, is_lazy
from dus_gym.core.methods import IterationBatch, StepContext, check_method_fusion, make_method
from dus_gym.core.metrics import classification_metrics, linear_probe_accuracy, shapley_values
from dus_gym.core.model import MultimodalNet, quantize_counts, resolve_device
from dus_gym.core.task import MultimodalSplit, Task


@dataclass(frozen=True)
class Evaluation:
    """Predictions and metrics on one split.

    Args:
        fused: accuracy, f1 and map of the fusion head.
        unimodal: per modality, the same metrics of its own head.
        fused_probabilities: (n, classes) softmax of the fusion head.
        unimodal_probabilities: per modality, (n, classes) softmax of its head.
        labels: true classes.
    """

    fused: dict[str, float]
    unimodal: dict[str, dict[str, float]]
    fused_probabilities: np.ndarray
    unimodal_probabilities: dict[str, np.ndarray]
    labels: np.ndarray


class Learner:
    """Trains a :class:`MultimodalNet` on a task, one iteration per call of :meth:`step`.

    Args:
        task: the task (data and encoders).
        config: learner settings.
        seed: seeds model initialisation, data order and the probe slice (no global RNG is touched).
        probe_size: samples held out of the training split as the CMD probe (0 for none).
    """

    def __init__(self, task: Task, config: LearnerConfig, seed: int = 0, probe_size: int = 0) -> None:
        self.task = task
        self.config = config
        self.seed = seed
        self.device = resolve_device(config.device)
        self.generator = torch.Generator().manual_seed(seed)
        train = task.splits["train"]
        if probe_size >= len(train):
            raise ValueError(f"probe_size ({probe_size}) must be smaller than the training split ({len(train)})")
        order = torch.randperm(len(train), generator=self.generator)
        self.probe = train.subset(order[:probe_size]).to(self.device) if probe_size else None
        # without a probe the training split is the task's own (shared by every learner of the process, no copy)
        kept = train.subset(torch.sort(order[probe_size:]).values) if probe_size else train
        self.train_split = kept.to(self.device)
        self.planner = BatchPlanner(len(self.train_split), self.generator)
        check_method_fusion(config.method, config.fusion)
        self.method = make_method(config.method, **config.method_kwargs)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = MultimodalNet(task, shared_head=self.method.shared_head, fusion=config.fusion).to(self.device)
        self.method.setup(self.model, task.modalities, self.device, seed)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.device.type == "cuda" and config.cudnn_benchmark:
            torch.backends.cudnn.benchmark = True  # a process-wide switch; shapes are few with count_sizes
        self._lazy = is_lazy(self.train_split)
        self._window_loader: WindowLoader | None = None
        self._encoders: dict[str, nn.Module] = dict(self.model.encoders.items())
        if config.compile:
            # compiled wrappers share the parameters; the state dict keeps plain module names
            self._encoders = {m: torch.compile(e, backend=config.compile_backend, dynamic=False)
                              for m, e in self._encoders.items()}
        self.optimizer = self._build_optimizer()
        self._context = StepContext(self.model, self._encoders, self.optimizer, self._autocast,
                                    splits={"train": self.train_split, "val": task.splits["val"]},
                                    batches=self._labelled_batches)
        self.scheduler = (torch.optim.lr_scheduler.StepLR(self.optimizer, config.lr_decay_every, config.lr_decay_gamma)
                          if config.lr_decay_every else None)
        self.iteration = 0
        self.optimizer_steps = 0
        """Optimiser steps taken (one per finite iteration; MLA: one per modality stepped)."""
        self.samples_seen = np.zeros(len(task.modalities), dtype=np.int64)

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modality names in count order."""
        return self.task.modalities

    @property
    def n_train(self) -> int:
        """Samples the learner trains on (the training split less the probe)."""
        return len(self.train_split)

    def _build_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        if c.optimizer == "adam":
            return torch.optim.Adam(self.model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        if c.optimizer == "adamw":
            return torch.optim.AdamW(self.model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        return torch.optim.SGD(self.model.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)

    def quantize(self, counts: Sequence[int]) -> np.ndarray:
        """``counts`` rounded up to ``config.count_sizes`` (see :func:`quantize_counts`)."""
        return quantize_counts(counts, self.config.count_sizes)

    def step(self, counts: Sequence[int], progress: float | None = None) -> IterationStats:
        """Run one iteration with ``counts[m]`` samples of modality m (quantised, see :meth:`quantize`).

        ``progress`` is the place of this iteration in the run (iterations done / budget), for the
        methods that act over a window of training (None: no window applies).
        """
        counts = np.asarray(counts, dtype=np.int64)
        if counts.shape != (len(self.modalities),):
            raise ValueError(f"counts must have {len(self.modalities)} entries (one per modality "
                             f"{list(self.modalities)}), got {counts.tolist()}")
        counts = self.quantize(counts)
        if self._lazy and self.config.num_workers > 0 and self._window_loader is None:
            self._window_loader = WindowLoader(self.train_split, self.planner, self.config.num_workers,
                                               pin_memory=self.device.type == "cuda")
        epoch_fraction = self.planner.cursor / self.planner.n_train
        epoch = self.planner.epoch
        plan = self.planner.plan(counts.tolist())
        data, labels = self.train_split.features, self.train_split.labels
        window = None
        if self._window_loader is not None:
            window = {m: torch.cat([part.to(self.device, non_blocking=True) for part in parts])
                      for m, parts in self._window_loader.take(plan.window).items()}
        B = self.config.batch_size
        inputs, targets, weights = {}, {}, {}
        for k, m in enumerate(self.modalities):
            if counts[k] == 0:
                continue
            index = plan.modality_indices(k).to(self.device, non_blocking=True)
            inputs[m] = self._to_device(window[m][: counts[k]] if window is not None else data[m][index])
            targets[m] = labels[index]
            weights[m] = float(counts[k]) / B if self.config.unimodal_loss == "scaled" else 1.0
        paired_target = (labels[plan.paired_indices.to(self.device, non_blocking=True)]
                         if plan.n_paired > 0 else None)
        batch = IterationBatch(inputs, targets, weights, plan.n_paired, paired_target, epoch_fraction, epoch,
                               progress, B)
        self.model.train()
        out = self.method.step(self._context, batch)
        nan = torch.full((), float("nan"), device=self.device)
        unimodal_losses = [out.unimodal_losses[m].detach() if m in out.unimodal_losses else nan
                           for m in self.modalities]
        status = [out.status[m] if m in out.status else nan for m in self.modalities]
        # one device sync per iteration, after the backward pass has been queued
        values = torch.stack([out.loss.detach(), out.fusion_loss.detach(), *unimodal_losses, *status]).cpu().numpy()
        total = float(values[0])
        if out.optimizer_steps is not None:
            self.optimizer_steps += out.optimizer_steps
        elif np.isfinite(total):
            self.optimizer.step()
            self.optimizer_steps += 1
        if self.scheduler is not None and np.isfinite(total):
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.iteration += 1
        self.samples_seen += counts
        M = len(counts)
        return IterationStats(total, float(values[1]), values[2 : 2 + M].astype(np.float64),
                              values[2 + M :].astype(np.float64), counts)

    def _batches(self, split: MultimodalSplit) -> Iterator[dict[str, torch.Tensor]]:
        """``split`` in order, eval_batch_size samples at a time (lazy sources through DataLoader workers)."""
        size = self.config.eval_batch_size
        if is_lazy(split) and self.config.num_workers > 0:
            loader = DataLoader(SampleDataset(split), batch_size=size, num_workers=self.config.num_workers,
                                pin_memory=self.device.type == "cuda")
            for _, features in loader:
                yield features
            return
        for start in range(0, len(split), size):
            yield {m: x[start : start + size] for m, x in split.features.items()}

    def _labelled_batches(self, split: MultimodalSplit) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        """``split`` in order, eval_batch_size samples at a time, features and labels on the learner's device."""
        size = self.config.eval_batch_size
        for start, features in zip(range(0, len(split), size), self._batches(split), strict=True):
            yield ({m: self._to_device(x) for m, x in features.items()},
                   split.labels[start : start + size].to(self.device))

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.precision == "bf16")

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.config.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    @torch.no_grad()
    def predict(self, split: MultimodalSplit, zeroed: Sequence[str] = ()) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Softmax outputs of every unimodal head and of the fusion head on ``split``.

        The inputs of the modalities in ``zeroed`` are replaced by zeros (a masked modality, as
        BalanceBenchmark masks one to measure its contribution).
        """
        self.model.eval()
        unimodal: dict[str, list[torch.Tensor]] = {m: [] for m in self.modalities}
        fused = []
        for features in self._batches(split):
            chunk = {m: self._to_device(x) for m, x in features.items()}
            chunk.update({m: torch.zeros_like(chunk[m]) for m in zeroed})
            with self._autocast():
                encoded = {m: self.model.encoders[m](chunk[m]) for m in self.modalities}
                logits = {m: self.model.heads[m](encoded[m]) for m in self.modalities}
                fused_logits = self.method.fusion_logits(self.model, [encoded[m] for m in self.modalities])
            for m in self.modalities:
                unimodal[m].append(logits[m].float().softmax(1).cpu())
            fused.append(self.method.fuse(logits, fused_logits).cpu())
        return {m: torch.cat(p).numpy() for m, p in unimodal.items()}, torch.cat(fused).numpy()

    def accuracies(self, split_name: str) -> tuple[float, dict[str, float]]:
        """Fused and per-modality accuracy on a split (cheaper than :meth:`evaluate`)."""
        fused, unimodal, _ = self.scores(split_name)
        return fused, unimodal

    def scores(self, split_name: str) -> tuple[float, dict[str, float], np.ndarray]:
        """Fused accuracy, each head's accuracy and each head's status (mean true-class probability) on a split."""
        split = self.task.splits[split_name]
        unimodal, fused = self.predict(split)
        labels = split.labels.numpy()
        rows = np.arange(len(labels))
        status = np.array([float(unimodal[m][rows, labels].mean()) for m in self.modalities])
        return float((fused.argmax(1) == labels).mean()), {
            m: float((p.argmax(1) == labels).mean()) for m, p in unimodal.items()
        }, status

    def modality_shapley(self, split_name: str = "test") -> dict[str, float]:
        """Shapley value of every modality to the fused accuracy on a split (:func:`shapley_values`).

        The value of a set S of modalities is the fused accuracy with the inputs of the other
        modalities zeroed; the values sum to the accuracy minus that with every input zeroed.
        """
        split = self.task.splits[split_name]
        labels = split.labels.numpy()

        def accuracy(present: frozenset[str]) -> float:
            _, fused = self.predict(split, zeroed=[m for m in self.modalities if m not in present])
            return float((fused.argmax(1) == labels).mean())

        return shapley_values(accuracy, self.modalities)

    def probe_status(self) -> np.ndarray:
        """s(m) of every modality on the held-out probe slice."""
        if self.probe is None:
            raise ValueError("this learner has no probe slice (probe_size=0)")
        unimodal, _ = self.predict(self.probe)
        labels = self.probe.labels.cpu().numpy()
        return np.array([float(unimodal[m][np.arange(len(labels)), labels].mean()) for m in self.modalities])

    def evaluate(self, split_name: str) -> Evaluation:
        """Metrics of the fusion head and of every unimodal head on a split of the task."""
        split = self.task.splits[split_name]
        unimodal, fused = self.predict(split)
        labels = split.labels.numpy()
        n = self.task.n_classes
        return Evaluation(
            fused=classification_metrics(fused, labels, n),
            unimodal={m: classification_metrics(p, labels, n) for m, p in unimodal.items()},
            fused_probabilities=fused,
            unimodal_probabilities=unimodal,
            labels=labels,
        )

    @torch.no_grad()
    def encode(self, split: MultimodalSplit, modality: str) -> np.ndarray:
        """Features of ``modality``'s encoder on ``split`` (for linear probes)."""
        self.model.eval()
        encoder = self.model.encoders[modality]
        with self._autocast():
            parts = [encoder(self._to_device(features[modality])).float().cpu() for features in self._batches(split)]
        return torch.cat(parts).numpy()

    def linear_probe(self, modality: str, split_name: str = "test") -> float:
        """Accuracy of a linear classifier on the frozen features of ``modality``'s encoder."""
        train = self.train_split
        test = self.task.splits[split_name]
        return linear_probe_accuracy(
            self.encode(train, modality), train.labels.cpu().numpy(),
            self.encode(test, modality), test.labels.numpy(),
        )

    def state_dict(self) -> dict[str, Any]:
        """Model, optimizer, data walk and counters."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "planner": self.planner.state_dict(),
            "iteration": self.iteration,
            "optimizer_steps": self.optimizer_steps,
            "samples_seen": self.samples_seen.tolist(),
            "method": self.method.state_dict(),
        }

    def save(self, path: str | Path) -> None:
        """Write a checkpoint (atomically: temporary file, then rename) that :meth:`load` reads."""
        write_learner_checkpoint(path, self.task.name, self.modalities, self.method.name, self.state_dict())

    def load(self, path: str | Path) -> None:
        """Restore a checkpoint written by :meth:`save` (read with ``weights_only=True``).

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: not a dus-gym learner checkpoint, another version, or another task.
        """
        state = read_learner_checkpoint(path, self.device, self.task.name, self.modalities, self.method.name,
                                        self.method.shared_head)
        try:
            self.load_state_dict(state)
        except (KeyError, RuntimeError, ValueError) as err:
            raise ValueError(f"{path} does not fit this learner (encoders or sizes differ): {err}") from err

    def set_base_lr(self, lr: float) -> None:
        """Continue with base learning rate ``lr`` (a step decay keeps its position: lr x gamma^(decays done))."""
        current = lr
        if self.scheduler is not None:
            self.scheduler.base_lrs = [lr for _ in self.scheduler.base_lrs]
            current = lr * self.config.lr_decay_gamma ** (self.scheduler.last_epoch // self.config.lr_decay_every)
        for group in self.optimizer.param_groups:
            group["lr"] = current
            if "initial_lr" in group:
                group["initial_lr"] = lr

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state saved by :meth:`state_dict`."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.planner.load_state_dict(state["planner"])
        self._window_loader = None  # the prefetch stream restarts from the restored walk
        self.iteration = int(state["iteration"])
        self.optimizer_steps = int(state.get("optimizer_steps", self.iteration))
        self.samples_seen = np.asarray(state["samples_seen"], dtype=np.int64)
        self.method.load_state_dict(state.get("method", {}))


class LearnerGroup:
    """N independent :class:`Learner` objects behind the batched interface (``LearnerBackend``).

    Each learner keeps its own model, optimiser and data walk and steps one after the other, so
    every method, optimiser, precision and data source works; N = 1 is the learner of a ``DUSEnv``
    and of ``dus-gym run``.

    Args:
        task: the task.
        config: learner settings, the same for every learner.
        n_learners: N.
        probe_size: samples held out of each learner's training split as its CMD probe (0: none).
    """

    def __init__(self, task: Task, config: LearnerConfig, n_learners: int = 1, probe_size: int = 0) -> None:
        self.task = task
        self.config = config
        self.n_learners = n_learners
        self.probe_size = probe_size
        self.learners: list[Learner | None] = [None] * n_learners

    def learner(self, i: int) -> Learner:
        """Learner ``i`` (after :meth:`reset_learner`)."""
        learner = self.learners[i]
        if learner is None:
            raise RuntimeError(f"learner {i} has not been started: call reset_learner({i}, seed) first")
        return learner

    @property
    def iteration(self) -> np.ndarray:
        """(N,) iterations each learner has run (0 for one not started yet)."""
        return np.array([0 if lr is None else lr.iteration for lr in self.learners], dtype=np.int64)

    def reset_learner(self, i: int, seed: int, checkpoint: str | Path | None = None) -> None:
        """Start learner ``i`` as ``Learner(task, config, seed, probe_size)``.

        With ``checkpoint``, its model, optimiser and counters come from that learner checkpoint and
        its data order from ``seed``.
        """
        learner = Learner(self.task, self.config, seed=seed, probe_size=self.probe_size)
        if checkpoint is not None:
            learner.load(checkpoint)
            learner.planner.reseed(seed)
        self.learners[i] = learner

    def step(self, counts: np.ndarray, active: np.ndarray | None = None, progress: np.ndarray | None = None
             ) -> BatchedIterationStats:
        """One iteration of every active learner, learner i with ``counts[i]`` at ``progress[i]`` of its run."""
        counts = np.asarray(counts, dtype=np.int64)
        active = np.ones(self.n_learners, dtype=bool) if active is None else np.asarray(active, dtype=bool)
        stats = [self.learner(i).step(counts[i], None if progress is None else float(progress[i])) if active[i]
                 else None for i in range(self.n_learners)]
        return BatchedIterationStats.gather(stats, len(self.task.modalities))

    def accuracies(self, split_name: str) -> tuple[np.ndarray, np.ndarray]:
        """Fused (N,) and per-modality (N, M) accuracy of every learner."""
        return self.scores(split_name)[:2]

    def scores(self, split_name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fused accuracy (N,), per-modality accuracy (N, M) and per-modality status (N, M) of every learner."""
        results = [self.learner(i).scores(split_name) for i in range(self.n_learners)]
        return (np.array([fused for fused, _, _ in results]),
                np.array([[per[m] for m in self.task.modalities] for _, per, _ in results]),
                np.stack([status for _, _, status in results]))

    def probe_status(self) -> np.ndarray:
        """(N, M) s(m) of every learner on its own probe slice."""
        return np.stack([self.learner(i).probe_status() for i in range(self.n_learners)])
