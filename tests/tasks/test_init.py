"""The task table: unknown names, registered and module:function tasks, and the checks of a Task."""

import pytest
import torch

from dus_gym.core.task import MLPEncoder
from dus_gym.tasks import MultimodalSplit, Task, make_task, register_task


def test_unknown_task_and_bad_kwargs():
    with pytest.raises(ValueError, match="did you mean 'mfeat'"):
        make_task("mfet")
    with pytest.raises(ValueError, match="bad arguments"):
        make_task("synthetic", n_sample=10)


def _tiny_task(n: int = 40) -> Task:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 2
    def split():
        return MultimodalSplit({"a": torch.randn(n, 3, generator=g), "b": torch.randn(n, 2, generator=g)}, labels)
    return Task("tiny", ("a", "b"), 2, {"train": split(), "val": split(), "test": split()},
                {"a": lambda: MLPEncoder(3, 8), "b": lambda: MLPEncoder(2, 8)})


def test_user_task_registration_and_validation():
    register_task("tiny", _tiny_task)
    assert make_task("tiny", n=20).modalities == ("a", "b")
    assert make_task("tests.tasks.test_init:_tiny_task").name == "tiny"
    labels = torch.tensor([0, 5])
    with pytest.raises(ValueError, match="labels outside"):
        s = MultimodalSplit({"a": torch.zeros(2, 1), "b": torch.zeros(2, 1)}, labels)
        Task("bad", ("a", "b"), 2, {"train": s, "val": s, "test": s}, {"a": None, "b": None})
    with pytest.raises(ValueError, match="has 3 samples"):
        MultimodalSplit({"a": torch.zeros(3, 1)}, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        s = MultimodalSplit({"a": torch.full((2, 1), float("nan")), "b": torch.zeros(2, 1)}, torch.zeros(2).long())
        Task("bad", ("a", "b"), 2, {"train": s, "val": s, "test": s}, {"a": None, "b": None})
