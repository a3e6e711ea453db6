"""N learners trained at once with batched computation (torch.func), on one task or on one task each.

Each learner keeps what a :class:`dus_gym.core.learner.Learner` keeps: its own parameters, momentum,
learning rate, data order (its own generator and :class:`BatchPlanner`), probe slice and
iteration count. The parameters of all N are stacked along a leading learner dimension
(``torch.func.stack_module_state``) and one forward/backward runs every learner at once through
``vmap`` of ``functional_call``.

Counts differ between learners, so each modality's batch is padded to the largest count over
the learners and the losses are masked: learner i's CE of modality m, its status and its fusion
loss are the masked means of :func:`dus_gym.core.objectives.head_terms` over its own rows, and its
loss is :func:`dus_gym.core.objectives.unimodal_aux_loss`, the formulas ``Learner.step`` uses for
that learner alone. The SGD step (momentum, weight decay, StepLR decay) is applied to the stacked
tensors with the formulas of ``torch.optim.SGD``: a learner whose loss is NaN/inf, or that is not
active in this iteration, is left unchanged, as ``Learner.step`` leaves it, and a parameter that
got no gradient for a learner (the encoder and head of a modality that drew no sample, the fusion
head when no sample is paired) is left unchanged for that learner, as ``torch.optim.SGD`` skips a
parameter without a gradient.

BatchNorm: padded rows must not enter the batch statistics. Every ``BatchNorm1d/2d/3d`` of an
encoder is replaced by :class:`MaskedBatchNorm` (same parameters and buffers), which in training
normalises with the mean and biased variance of the valid rows only and updates its running
statistics with their unbiased variance, like ``nn.BatchNorm``; a learner with no valid row in an
iteration keeps its running statistics and ``num_batches_tracked``. The built-in MLP and small-CNN
encoders have no BatchNorm; the ResNet encoders (audio-visual tasks) have, but those tasks read
their data lazily, which this learner does not support.

Data: the task's tensors are used as they are (on CPU) or copied once to the device; every
learner gathers its batches from that one copy through its own index map (no per-learner copy).
Given N tasks of equal shapes (``tasks``: the instances of a task family with the same modalities,
feature shapes, classes, split sizes and encoders; :func:`task_shape_key`), learner i trains and is
scored on ``tasks[i]``: the training splits of the distinct tasks are concatenated along the
sample axis (one copy), each learner's index map is offset by its task's start, and validation
and test scores gather every learner's own rows of the concatenated split.

Not supported (a ``ConfigError`` says so): methods that are not ``batchable`` (all but the default
``unimodal-aux``), Adam, bf16 autocast, channels-last, torch.compile, lazy (on-disk) modalities.
Random layers (dropout) fail under ``vmap``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from dus_gym.core.backend import BatchedIterationStats
from dus_gym.core.batch_plan import BatchPlanner
from dus_gym.core.checkpoint import read_learner_checkpoint
from dus_gym.core.config import ConfigError, LearnerConfig
from dus_gym.core.loader import is_lazy
from dus_gym.core.methods import method_class
from dus_gym.core.model import MultimodalNet, quantize_counts, resolve_device
from dus_gym.core.objectives import head_terms, unimodal_aux_loss
from dus_gym.core.task import MultimodalSplit, Task


class MaskedBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics cover only the rows of a mask (the unpadded samples).

    Same parameters, buffers and state-dict keys as ``nn.BatchNorm1d/2d/3d``. Set :attr:`mask`
    (a bool vector over the batch) before a training forward; without a mask every row counts.
    The new running statistics of a training forward are left in :attr:`updated` (the buffers
    are not written, so that the forward stays functional under ``vmap``).

    Args:
        num_features: channels C of the (batch, C, ...) input.
        eps: added to the variance.
        momentum: running-statistics momentum (None: cumulative average).
        affine: learn a scale and shift.
        track_running_stats: keep running statistics (else batch statistics also in eval mode).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.mask: torch.Tensor | None = None
        self.updated: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"MaskedBatchNorm expects (batch, C, ...) input, got shape {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` with the masked batch statistics (training) or the running ones (eval)."""
        shape = (1, -1) + (1,) * (x.dim() - 2)
        use_batch = self.training or not self.track_running_stats
        if use_batch:
            mask = self.mask if self.mask is not None else torch.ones(len(x), dtype=torch.bool, device=x.device)
            weight = mask.to(x.dtype).view((-1,) + (1,) * (x.dim() - 1))
            dims = [0, *range(2, x.dim())]
            per_row = int(np.prod(x.shape[2:])) if x.dim() > 2 else 1
            n = mask.to(x.dtype).sum() * per_row
            mean = (x * weight).sum(dims) / n.clamp(min=1)
            var = ((x - mean.view(shape)) ** 2 * weight).sum(dims) / n.clamp(min=1)
            if self.training and self.track_running_stats:
                tracked = self.num_batches_tracked + (n > 0).long()
                rate = (self.momentum if self.momentum is not None
                        else 1.0 / tracked.clamp(min=1).to(x.dtype))
                unbiased = var.detach() * n / (n - 1).clamp(min=1)
                running_mean = torch.where(n > 0, (1 - rate) * self.running_mean + rate * mean.detach(),
                                           self.running_mean)
                running_var = torch.where(n > 1, (1 - rate) * self.running_var + rate * unbiased, self.running_var)
                self.updated = (running_mean, running_var, tracked)
        else:
            mean, var = self.running_mean, self.running_var
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def mask_batch_norms(module: nn.Module) -> list[MaskedBatchNorm]:
    """Replace every BatchNorm of ``module`` (in place) by a :class:`MaskedBatchNorm`; return them in order."""
    masked = []
    for name, child in list(module.named_children()):
        if isinstance(child, MaskedBatchNorm):
            masked.append(child)
        elif isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            replacement = MaskedBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                          child.track_running_stats)
            replacement.load_state_dict(child.state_dict())
            replacement.train(child.training)
            setattr(module, name, replacement.to(next(iter(child.state_dict().values())).device))
            masked.append(replacement)
        else:
            masked.extend(mask_batch_norms(child))
    return masked


class _PaddedForward(nn.Module):
    """One learner's forward on padded per-modality batches: unimodal logits, fused logits, new BatchNorm stats.

    Called through ``functional_call`` under ``vmap``, so one call runs every learner.

    Args:
        net: the template network (its parameters are replaced by each learner's).
        norms: per modality, the masked BatchNorms of its encoder.
    """

    def __init__(self, net: MultimodalNet, norms: dict[str, list[MaskedBatchNorm]]) -> None:
        super().__init__()
        self.net = net
        self.norms = norms

    def forward(self, xs: tuple[torch.Tensor, ...], masks: tuple[torch.Tensor, ...] | None, n_fused: int
                ) -> tuple[list[torch.Tensor], torch.Tensor, list[tuple[torch.Tensor, ...]]]:
        """Logits of every head on its modality's rows, of the fusion head on the first ``n_fused`` rows."""
        encoded = []
        for k, m in enumerate(self.net.modalities):
            for norm in self.norms[m]:
                norm.mask, norm.updated = (masks[k] if masks is not None else None), None
            encoded.append(self.net.encoders[m](xs[k]))
        logits = [self.net.heads[m](e) for m, e in zip(self.net.modalities, encoded, strict=True)]
        fused = self.net.fuse([e[:n_fused] for e in encoded])
        updated = []
        for m in self.net.modalities:
            for norm in self.norms[m]:
                if norm.updated is not None:
                    updated.append(norm.updated)
                norm.mask, norm.updated = None, None
        return logits, fused, updated


class BatchedLearner:
    """Trains N independent :class:`MultimodalNet` learners in one batched computation, on one task or one each.

    Learner i, reset with :meth:`reset_learner` from a seed, starts exactly as ``Learner(task,
    config, seed, probe_size)`` does (``Learner(tasks[i], ...)`` with ``tasks``) and, given the same
    counts, takes the same iterations (to float tolerance: batched kernels sum in another order).

    Args:
        task: the task (its data are shared by the N learners); with ``tasks``, the task whose
            shapes they all have (its data are not used unless it is one of them).
        config: learner settings, the same for every learner.
        n_learners: N.
        probe_size: samples held out of each learner's training split as its CMD probe (0: none).
        tasks: None (every learner on ``task``), or N tasks of ``task``'s shapes (:func:`task_shape_key`):
            learner i trains and is scored on ``tasks[i]``; see :meth:`set_tasks`.

    Raises:
        ValueError: ``tasks`` is not N tasks of ``task``'s shapes.
    """

    def __init__(self, task: Task, config: LearnerConfig, n_learners: int, probe_size: int = 0,
                 tasks: Sequence[Task] | None = None) -> None:
        check_batchable(task, config)
        if n_learners < 1:
            raise ConfigError(f"n_learners must be >= 1, got {n_learners}")
        self.task = task
        self.tasks: tuple[Task, ...] | None = None
        self._slots = np.zeros(n_learners, dtype=np.int64)  # learner i's task: the slots[i]-th block of the data
        self._distinct: list[Task] = [task]  # the distinct tasks, in the order of their blocks of the data
        self._shape_key: tuple[Any, ...] | None = None
        self.config = config
        self.n_learners = n_learners
        self.probe_size = probe_size
        self.device = resolve_device(config.device)
        train = task.splits["train"]
        if probe_size >= len(train):
            raise ValueError(f"probe_size ({probe_size}) must be smaller than the training split ({len(train)})")
        self._data: dict[str, MultimodalSplit] = {"train": train.to(self.device)}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.template = MultimodalNet(task, fusion=config.fusion).to(self.device)
        self._masked_norms = {m: mask_batch_norms(self.template.encoders[m]) for m in self.modalities}
        self._forward = _PaddedForward(self.template, self._masked_norms)
        module_names = {id(module): name for name, module in self.template.named_modules()}
        self._norm_prefixes = [module_names[id(norm)] + "." for m in self.modalities for norm in self._masked_norms[m]]
        params, buffers = stack_module_state([self.template] * n_learners)
        self.params: dict[str, torch.Tensor] = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        self.buffers: dict[str, torch.Tensor] = {k: v.clone() for k, v in buffers.items()}
        self.momentum_buffers = {k: torch.zeros_like(v) for k, v in self.params.items()}
        self.lr = torch.full((n_learners,), config.lr, dtype=torch.float64)
        self.n_updates = np.zeros(n_learners, dtype=np.int64)
        self.iteration = np.zeros(n_learners, dtype=np.int64)
        self.samples_seen = np.zeros((n_learners, len(task.modalities)), dtype=np.int64)
        n_keep = len(train) - probe_size
        self.keep = torch.zeros((n_learners, n_keep), dtype=torch.long, device=self.device)
        self.probe_index = torch.zeros((n_learners, probe_size), dtype=torch.long, device=self.device)
        self.planners: list[BatchPlanner | None] = [None] * n_learners
        # which modality's samples give a parameter its gradient (-1: the fusion head, from the paired samples)
        self._owners = {name: self._owner(name) for name in self.params}
        if tasks is not None:
            self.set_tasks(tasks)

    def _owner(self, name: str) -> int:
        for k, m in enumerate(self.modalities):
            if name.startswith((f"encoders.{m}.", f"heads.{m}.")):
                return k
        return -1

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modality names in count order."""
        return self.task.modalities

    @property
    def train_split(self) -> MultimodalSplit:
        """The one copy of the training split that every learner reads (through its index map).

        With several tasks, their training splits one after the other (learner i's rows are those of
        :meth:`task_of` i's block).
        """
        return self._data["train"]

    @property
    def shape_key(self) -> tuple[Any, ...]:
        """The shapes every task of these learners has (:func:`task_shape_key`)."""
        if self._shape_key is None:
            self._shape_key = task_shape_key(self.task)
        return self._shape_key

    def task_of(self, i: int) -> Task:
        """The task learner ``i`` trains on."""
        return self.task if self.tasks is None else self.tasks[i]

    def set_tasks(self, tasks: Sequence[Task]) -> None:
        """Put learner i on ``tasks[i]`` (N tasks of equal shapes, :func:`task_shape_key`).

        A learner whose task object is unchanged keeps its state and goes on training on the same
        samples; one whose task changed must be reset (:meth:`reset_learner`) before it steps again.

        Raises:
            ValueError: not N tasks, or tasks whose shapes differ from the learners' (a new
                ``BatchedLearner`` is needed for those).
        """
        tasks = tuple(tasks)
        if len(tasks) != self.n_learners:
            raise ValueError(f"set_tasks needs one task per learner ({self.n_learners}), got {len(tasks)}")
        check_equal_shapes(tasks, self.shape_key)
        for task in {id(t): t for t in tasks}.values():
            if task is not self.task:
                check_batchable(task, self.config)
        previous = [self.task_of(i) for i in range(self.n_learners)]
        old_slots = self._slots.copy()
        distinct = list({id(t): t for t in tasks}.values())
        slots = np.array([next(k for k, t in enumerate(distinct) if t is task) for task in tasks], dtype=np.int64)
        n_train = len(tasks[0].splits["train"])
        self.task = tasks[0]
        if len(distinct) == 1:
            self.tasks = None
            self._data = {"train": self.task.splits["train"].to(self.device)}
        else:
            self.tasks = tasks
            self._data = {"train": _concatenate([t.splits["train"] for t in distinct]).to(self.device)}
        self._distinct = distinct
        self._slots = slots
        with torch.no_grad():
            for i, (old, new) in enumerate(zip(previous, tasks, strict=True)):
                if old is new:
                    shift = int(slots[i] - old_slots[i]) * n_train
                    self.keep[i] += shift
                    self.probe_index[i] += shift
                else:
                    self.planners[i] = None

    def _offset(self, split_name: str) -> torch.Tensor:
        """(N,) start of each learner's rows in the data of ``split_name`` (zeros with one task)."""
        size = len(self.task.splits[split_name])
        return torch.as_tensor(self._slots * size, device=self.device)

    def reset_learner(self, i: int, seed: int, checkpoint: str | Path | None = None, task: Task | None = None
                      ) -> None:
        """Start learner ``i`` afresh from ``seed`` as ``Learner(task, config, seed, probe_size)`` would.

        With ``checkpoint``, its model, momentum, learning rate and counters come from a learner
        checkpoint (``Learner.save``) and its data order from ``seed`` (as DUSEnv's start_checkpoint).
        With ``task`` (of the learners' shapes), learner ``i`` moves to it first (:meth:`set_tasks`).
        """
        if task is not None and task is not self.task_of(i):
            tasks = [self.task_of(k) for k in range(self.n_learners)]
            tasks[i] = task
            self.set_tasks(tasks)
        own = self.task_of(i)
        generator = torch.Generator().manual_seed(seed)
        n_train = len(own.splits["train"])
        order = torch.randperm(n_train, generator=generator)
        offset = int(self._slots[i]) * n_train
        self.probe_index[i] = (order[: self.probe_size] + offset).to(self.device)
        self.keep[i] = (torch.sort(order[self.probe_size :]).values + offset).to(self.device)
        planner = BatchPlanner(self.keep.shape[1], generator)
        iteration, n_updates, lr = 0, 0, self.config.lr
        momentum: dict[str, torch.Tensor] = {}
        if checkpoint is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                state = dict(MultimodalNet(own, fusion=self.config.fusion).to(self.device).state_dict())
        else:
            saved = read_learner_checkpoint(checkpoint, self.device, own.name, self.modalities,
                                            self.config.method, shared_head=False)
            state = saved["model"]
            if set(state) != set(self.params) | set(self.buffers):
                raise ValueError(f"{checkpoint} does not fit this learner (encoders or sizes differ)")
            planner.load_state_dict(saved["planner"])
            planner.reseed(seed)
            iteration = int(saved["iteration"])
            optimizer = saved["optimizer"]
            lr = optimizer["param_groups"][0]["lr"]
            scheduler = saved.get("scheduler")
            n_updates = int(scheduler["last_epoch"]) if self.config.lr_decay_every and scheduler else 0
            names = [name for name, _ in self.template.named_parameters()]  # the optimiser's parameter order
            for index, entry in optimizer["state"].items():
                if entry.get("momentum_buffer") is not None:
                    momentum[names[int(index)]] = entry["momentum_buffer"]
        with torch.no_grad():
            for name, stacked in (*self.params.items(), *self.buffers.items()):
                stacked[i].copy_(state[name])
            for name, buffer in self.momentum_buffers.items():
                buffer[i].copy_(momentum[name]) if name in momentum else buffer[i].zero_()
        self.planners[i] = planner
        self.lr[i] = lr
        self.n_updates[i] = n_updates
        self.iteration[i] = iteration
        self.samples_seen[i] = 0

    def quantize(self, counts: np.ndarray) -> np.ndarray:
        """(N, M) counts rounded up to ``config.count_sizes``, as ``Learner.quantize`` does."""
        return quantize_counts(counts, self.config.count_sizes)

    def _apply(self, xs: list[torch.Tensor], masks: list[torch.Tensor] | None, n_fused: int, batched: bool
               ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Every learner's unimodal and fused logits, (N, rows, classes), in one vmapped call.

        ``xs`` are per-modality inputs, (N, rows, ...) when ``batched`` or (rows, ...) shared by all learners;
        in training, ``masks`` mark each learner's real rows and the BatchNorm statistics are written back.
        """
        params = {f"net.{k}": v for k, v in self.params.items()}
        buffers = {f"net.{k}": v for k, v in self.buffers.items()}

        def one(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], x: tuple[torch.Tensor, ...],
                mask: tuple[torch.Tensor, ...] | None) -> Any:
            return functional_call(self._forward, (p, b), (x, mask, n_fused), tie_weights=False)

        in_dims = (0, 0, 0 if batched else None, 0 if masks is not None else None)
        logits, fused, updated = vmap(one, in_dims=in_dims)(params, buffers, tuple(xs),
                                                            tuple(masks) if masks is not None else None)
        if updated and self.template.training:
            with torch.no_grad():
                for prefix, (mean, var, tracked) in zip(self._norm_prefixes, updated, strict=True):
                    self.buffers[prefix + "running_mean"].copy_(mean)
                    self.buffers[prefix + "running_var"].copy_(var)
                    self.buffers[prefix + "num_batches_tracked"].copy_(tracked)
        return logits, fused

    def step(self, counts: np.ndarray, active: np.ndarray | None = None, progress: np.ndarray | None = None
             ) -> BatchedIterationStats:
        """One optimizer step of every active learner, learner i with ``counts[i, m]`` samples of modality m.

        ``progress`` (each learner's place in its run) is accepted for the backend interface; the
        batchable methods do not depend on it.
        """
        N, M = self.n_learners, len(self.modalities)
        counts = np.asarray(counts, dtype=np.int64)
        if counts.shape != (N, M):
            raise ValueError(f"counts must have shape ({N}, {M}) (learners x modalities {list(self.modalities)}), "
                             f"got {counts.shape}")
        active = np.ones(N, dtype=bool) if active is None else np.asarray(active, dtype=bool)
        if any(self.planners[i] is None for i in np.flatnonzero(active)):
            raise RuntimeError("reset_learner(i, seed) every active learner before step()")
        counts = np.where(active[:, None], self.quantize(counts), 0)
        width = max(int(counts.max()), 1)
        index = torch.zeros((N, width), dtype=torch.long)
        for i in np.flatnonzero(active):
            window = self.planners[i].plan(counts[i].tolist()).window
            index[i, : len(window)] = window
        index = torch.gather(self.keep, 1, index.to(self.device))  # learner-local -> task indices
        n = torch.as_tensor(counts, device=self.device)
        n_paired = n.min(1).values
        data, labels = self.train_split.features, self.train_split.labels
        self.template.train()
        B = self.config.batch_size
        widths = [max(int(counts[:, k].max()), 1) for k in range(M)]
        masks = [torch.arange(w, device=self.device) < n[:, k : k + 1] for k, w in enumerate(widths)]
        width_p = max(int(counts.min(1).max()), 1)  # from the host counts: no device sync
        xs = [data[m][index[:, :w]] for m, w in zip(self.modalities, widths, strict=True)]
        logits, fused = self._apply(xs, masks, width_p, batched=True)
        ce, status = [], []
        for k in range(M):
            ce_k, status_k = head_terms(logits[k], labels[index[:, : widths[k]]], masks[k])
            ce.append(ce_k)
            status.append(status_k)
        mask = torch.arange(width_p, device=self.device) < n_paired[:, None]
        fusion_ce, _ = head_terms(fused, labels[index[:, :width_p]], mask)
        present = n > 0
        weights = n.float() / B if self.config.unimodal_loss == "scaled" else torch.ones((N, M), device=self.device)
        loss = unimodal_aux_loss(torch.stack(ce, 1), weights, present, fusion_ce, n_paired > 0)
        status = torch.where(present, torch.stack(status, 1), float("nan"))
        loss.sum().backward()
        unimodal_ce = torch.where(present, torch.stack(ce, 1).detach(), float("nan"))
        fusion_ce = torch.where(n_paired > 0, fusion_ce.detach(), float("nan"))
        values = torch.cat([loss.detach()[:, None], fusion_ce[:, None], unimodal_ce, status], dim=1)
        values = np.where(active[:, None], values.cpu().numpy().astype(np.float64), np.nan)  # one device sync
        update = active & np.isfinite(values[:, 0])
        self._sgd(update, counts)
        self.iteration += active
        self.samples_seen += counts
        return BatchedIterationStats(values[:, 0], values[:, 1], values[:, 2 : 2 + M], values[:, 2 + M :], counts,
                                     active)

    @torch.no_grad()
    def _sgd(self, update: np.ndarray, counts: np.ndarray) -> None:
        """torch.optim.SGD (momentum, dampening 0, weight decay, no Nesterov) on the learners of ``update``.

        A parameter is stepped for learner i only where it got a gradient in ``Learner.step``: its
        modality drew samples (``counts[i, m] > 0``), or, for the fusion head, some sample was paired.
        """
        c = self.config
        names = [name for name, p in self.params.items() if p.grad is not None]
        params = [self.params[name] for name in names]
        grads = [p.grad for p in params]
        buffers = [self.momentum_buffers[name] for name in names]
        has_samples = np.concatenate([counts > 0, (counts.min(1) > 0)[:, None]], axis=1)  # (N, M + 1)
        same_lr = bool((self.lr == self.lr[0]).all())
        if update.all() and has_samples.all() and same_lr:  # the common case: in place, as SGD's foreach path
            if c.weight_decay:
                grads = torch._foreach_add(grads, params, alpha=c.weight_decay)
            if c.momentum:
                torch._foreach_mul_(buffers, c.momentum)
                torch._foreach_add_(buffers, grads)
                grads = buffers
            torch._foreach_add_(params, grads, alpha=-float(self.lr[0]))
        else:
            lr = self.lr.to(self.device).float()
            stepped = torch.as_tensor(update[:, None] & has_samples, device=self.device)  # (N, M + 1)
            for name, p, grad, buffer in zip(names, params, grads, buffers, strict=True):
                shape = (-1,) + (1,) * (p.dim() - 1)
                keep = stepped[:, self._owners[name]].view(shape)
                d = grad.add(p, alpha=c.weight_decay) if c.weight_decay else grad
                if c.momentum:
                    new_buffer = buffer.mul(c.momentum).add_(d)
                    buffer.copy_(torch.where(keep, new_buffer, buffer))
                    d = new_buffer
                p.copy_(torch.where(keep, p - lr.view(shape) * d, p))
        for p in params:
            p.grad = None
        self.n_updates += update
        if c.lr_decay_every:
            decay = update & (self.n_updates % c.lr_decay_every == 0)
            self.lr[torch.as_tensor(decay)] *= c.lr_decay_gamma

    @torch.no_grad()
    def _predict(self, features: dict[str, torch.Tensor], batched: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Softmax of every head and of the fusion head for every learner: (N, n, classes) each."""
        self.template.eval()
        xs = [features[m] for m in self.modalities]
        rows = xs[0].shape[1] if batched else xs[0].shape[0]
        logits, fused = self._apply(xs, None, rows, batched=batched)
        return [x.float().softmax(2) for x in logits], fused.float().softmax(2)

    def _split_on_device(self, split_name: str) -> MultimodalSplit:
        if split_name not in self._data:
            split = (self.task.splits[split_name] if self.tasks is None
                     else _concatenate([t.splits[split_name] for t in self._distinct]))
            self._data[split_name] = split.to(self.device)
        return self._data[split_name]

    def accuracies(self, split_name: str) -> tuple[np.ndarray, np.ndarray]:
        """Fused (N,) and per-modality (N, M) accuracy of every learner on a split of the task."""
        return self.scores(split_name)[:2]

    def scores(self, split_name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fused accuracy (N,), per-modality accuracy (N, M) and status (N, M) of every learner on a split."""
        split = self._split_on_device(split_name)
        size = self.config.eval_batch_size
        n = len(self.task.splits[split_name])
        offset = self._offset(split_name)[:, None] if self.tasks is not None else None
        fused_hits, unimodal_hits, true_class = [], [], []
        for start in range(0, n, size):
            if offset is None:  # one task: every learner reads the same rows
                chunk = {m: x[start : start + size] for m, x in split.features.items()}
                target = split.labels[start : start + size]
                unimodal, fused = self._predict(chunk, batched=False)
                index = target.view(1, -1, 1).expand(self.n_learners, -1, 1)
            else:  # learner i reads its own task's rows
                rows = offset + torch.arange(start, min(start + size, n), device=self.device)
                unimodal, fused = self._predict({m: x[rows] for m, x in split.features.items()}, batched=True)
                target = split.labels[rows]
                index = target.unsqueeze(2)
            fused_hits.append(fused.argmax(2) == target)
            unimodal_hits.append(torch.stack([p.argmax(2) == target for p in unimodal], dim=2))
            true_class.append(torch.stack([p.gather(2, index).squeeze(2) for p in unimodal], dim=2))
        fused_acc = torch.cat(fused_hits, 1).double().mean(1).cpu().numpy()
        return (fused_acc, torch.cat(unimodal_hits, 1).double().mean(1).cpu().numpy(),
                torch.cat(true_class, 1).double().mean(1).cpu().numpy())

    def probe_status(self) -> np.ndarray:
        """(N, M) s(m) of every learner on its own held-out probe slice."""
        if not self.probe_size:
            raise ValueError("these learners have no probe slice (probe_size=0)")
        size = self.config.eval_batch_size
        data, labels = self.train_split.features, self.train_split.labels
        sums = torch.zeros((self.n_learners, len(self.modalities)), dtype=torch.float64, device=self.device)
        for start in range(0, self.probe_size, size):
            rows = self.probe_index[:, start : start + size]
            unimodal, _ = self._predict({m: data[m][rows] for m in self.modalities}, batched=True)
            target = labels[rows].unsqueeze(2)
            for k, p in enumerate(unimodal):
                sums[:, k] += p.gather(2, target).squeeze(2).double().sum(1)
        return (sums / self.probe_size).cpu().numpy()

    def learner_state(self, i: int) -> dict[str, torch.Tensor]:
        """Learner ``i``'s model state dict (the keys of ``MultimodalNet.state_dict()``)."""
        return {k: v[i].detach().clone() for k, v in (*self.params.items(), *self.buffers.items())}


def check_batchable(task: Task, config: LearnerConfig) -> None:
    """Raise a ConfigError naming what a :class:`BatchedLearner` cannot run."""
    problems = []
    if not method_class(config.method).batchable:
        problems.append(f"method '{config.method}' (only batchable methods: unimodal-aux, the fusion CE plus the "
                        "weighted unimodal CEs)")
    if config.optimizer != "sgd":
        problems.append(f"optimizer '{config.optimizer}' (only sgd)")
    if config.precision != "fp32":
        problems.append(f"precision '{config.precision}' (only fp32)")
    if config.channels_last:
        problems.append("channels_last")
    if config.compile:
        problems.append("compile")
    if any(is_lazy(split) for split in task.splits.values()):
        problems.append(f"task '{task.name}' with lazy (on-disk) modalities")
    if problems:
        raise ConfigError("the vectorised env (batched learners) does not support " + ", ".join(problems)
                          + "; use vec_env 'dummy' or 'subproc' for this env")



def task_shape_key(task: Task) -> tuple[Any, ...]:
    """What tasks must share to be trained by one :class:`BatchedLearner` (their parameters are stacked).

    A tuple of (what, value) pairs: the modality names, the number of classes, each split's size
    and per-modality feature shapes (after the sample axis) and dtypes, and the parameter shapes of
    each modality's encoder (built on the meta device: no memory, no random draw).
    """
    splits = tuple((name, len(split), tuple((m, tuple(getattr(split.features[m], "shape", ())[1:]),
                                             str(getattr(split.features[m], "dtype", ""))) for m in task.modalities))
                   for name, split in sorted(task.splits.items()))
    encoders = tuple((m, _parameter_shapes(task.encoders[m])) for m in task.modalities)
    return (("modalities", task.modalities), ("number of classes", task.n_classes),
            ("split sizes and feature shapes", splits), ("encoder parameter shapes", encoders))


def check_equal_shapes(tasks: Sequence[Task], key: tuple[Any, ...] | None = None) -> None:
    """Raise a ValueError naming the first task whose shapes differ from ``key`` (default: the first task's)."""
    if not tasks:
        raise ValueError("need at least one task")
    key = task_shape_key(tasks[0]) if key is None else key
    keys: dict[int, tuple[Any, ...]] = {}
    for i, task in enumerate(tasks):
        if id(task) not in keys:
            keys[id(task)] = task_shape_key(task)
        other = keys[id(task)]
        for (what, expected), (_, found) in zip(key, other, strict=True):
            if found != expected:
                shown = "" if what == "encoder parameter shapes" else f": {found} instead of {expected}"
                raise ValueError(f"task {i} ('{task.name}') differs in its {what}{shown}; batched learners need "
                                 "tasks of equal shapes")


def _parameter_shapes(factory: Any) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """The state-dict shapes of the module ``factory()`` builds (on the meta device where it can)."""
    try:
        with torch.device("meta"):
            module = factory()
    except Exception:  # a factory that reads weights: build it for real, without touching the global RNG
        with torch.random.fork_rng(devices=[]):
            module = factory()
    return tuple((k, tuple(v.shape)) for k, v in module.state_dict().items())


def _concatenate(splits: Sequence[MultimodalSplit]) -> MultimodalSplit:
    """One split holding ``splits`` one after the other (in-memory tensors)."""
    return MultimodalSplit({m: torch.cat([s.features[m] for s in splits]) for m in splits[0].features},
                           torch.cat([s.labels for s in splits]))
