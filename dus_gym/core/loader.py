"""Background loading of lazy (on-disk) modalities in the order the batch plan will consume them.

The batch plan always takes a prefix of the remaining shared order and advances the cursor by the
size of that prefix, so the samples are consumed exactly in the order of the stream "rest of this
epoch's order, then each next epoch's shuffle". A DataLoader with worker processes and pinned
memory loads that stream ahead; the learner takes max n(m) samples from it per iteration, whatever
the counts turn out to be.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from dus_gym.core.batch_plan import BatchPlanner
from dus_gym.core.task import MultimodalSplit


def is_lazy(split: MultimodalSplit) -> bool:
    """True when a modality of ``split`` is loaded from disk on demand rather than held as a tensor."""
    return any(not isinstance(x, torch.Tensor) for x in split.features.values())


class SampleDataset(Dataset):
    """One paired sample of every modality, with its index, from a split."""

    def __init__(self, split: MultimodalSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[int, dict[str, torch.Tensor]]:
        return i, {m: x[[i]][0] for m, x in self.split.features.items()}


class OrderStream(Sampler[int]):
    """The planner's future order, from a copy of its state (so its own walk is untouched)."""

    def __init__(self, planner: BatchPlanner) -> None:
        self.state = copy.deepcopy(planner.state_dict())
        self.n_train = planner.n_train

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator()
        generator.set_state(self.state["generator"])
        order, cursor = self.state["order"], self.state["cursor"]
        while True:
            yield from order[cursor:].tolist()
            order, cursor = torch.randperm(self.n_train, generator=generator), 0


class WindowLoader:
    """Hands out the next samples of the stream, loaded ahead by DataLoader workers.

    Args:
        split: the training split (lazy sources).
        planner: the learner's batch planner (only its current state is read).
        num_workers: DataLoader worker processes.
        pin_memory: page-locked host memory, so that copies to a GPU are asynchronous.
        chunk: samples per worker task.
    """

    def __init__(self, split: MultimodalSplit, planner: BatchPlanner, num_workers: int, pin_memory: bool,
                 chunk: int = 16) -> None:
        loader = DataLoader(SampleDataset(split), batch_size=chunk, sampler=OrderStream(planner),
                            num_workers=num_workers, pin_memory=pin_memory, persistent_workers=num_workers > 0,
                            prefetch_factor=4 if num_workers > 0 else None)
        self.iterator = iter(loader)
        self.pending: list[tuple[torch.Tensor, dict[str, torch.Tensor]]] = []

    def take(self, window: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """The samples of ``window`` (the next len(window) of the stream) as per-modality chunks.

        Chunks stay as loaded (pinned, when asked), so each can be copied to the device without
        blocking and concatenated there.
        """
        need = len(window)
        indices: list[torch.Tensor] = []
        parts: dict[str, list[torch.Tensor]] = {}
        while need > 0:
            if not self.pending:
                self.pending.append(next(self.iterator))
            index, batch = self.pending.pop(0)
            take = min(need, len(index))
            indices.append(index[:take])
            for m, x in batch.items():
                parts.setdefault(m, []).append(x[:take])
            if take < len(index):
                self.pending.insert(0, (index[take:], {m: x[take:] for m, x in batch.items()}))
            need -= take
        if not torch.equal(torch.cat(indices), window.cpu()):
            raise RuntimeError("the prefetched samples are out of step with the batch plan")
        return parts
