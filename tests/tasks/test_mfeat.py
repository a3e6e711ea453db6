import numpy as np
import pytest
import torch

from dus_gym.core.task import MLPEncoder
from dus_gym.tasks import MultimodalSplit, Task, make_task, register_task
from dus_gym.tasks.mfeat import load_mfeat_arrays, stratified_splits


def test_mfeat_default_pix_fou_stratified_splits():
    task = make_task("mfeat")
    assert task.modalities == ("pix", "fou") and task.n_classes == 10
    sizes = {s: len(task.splits[s]) for s in ("train", "val", "test")}
    assert sizes == {"train": 1200, "val": 400, "test": 400}
    for split in task.splits.values():
        assert np.bincount(split.labels.numpy(), minlength=10).tolist() == [len(split) // 10] * 10
    train = task.splits["train"].features
    assert train["pix"].shape == (1200, 240) and train["fou"].shape == (1200, 76)
    assert abs(float(train["fou"].mean())) < 1e-4  # standardised on the training split
    cnn = task.encoders["pix"]()
    assert cnn(train["pix"][:5]).shape == (5, cnn.out_dim)
    assert cnn(train["pix"][:5].view(5, 1, 16, 15)).shape == (5, cnn.out_dim)


def test_mfeat_splits_are_seeded_and_disjoint():
    a, b = make_task("mfeat", split_seed=3), make_task("mfeat", split_seed=3)
    assert torch.equal(a.splits["test"].features["pix"], b.splits["test"].features["pix"])
    _, labels = load_mfeat_arrays()
    index = stratified_splits(labels, 0.2, 0.2, seed=3)
    parts = [set(index[s].tolist()) for s in ("train", "val", "test")]
    assert sum(map(len, parts)) == 2000 and len(set.union(*parts)) == 2000
    other = stratified_splits(labels, 0.2, 0.2, seed=4)
    assert set(other["test"].tolist()) != parts[2]


def test_mfeat_any_views_and_bad_views():
    task = make_task("mfeat", views=["fac", "zer", "mor"], pix_encoder="mlp")
    assert task.modalities == ("fac", "zer", "mor")
    with pytest.raises(ValueError, match="unknown mfeat view"):
        make_task("mfeat", views=["pix", "foo"])
    with pytest.raises(ValueError, match="two or more"):
        make_task("mfeat", views=["pix"])


def test_mfeat_missing_and_corrupt_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        make_task("mfeat", data_path=str(tmp_path / "nope.npz"))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 this is not an archive")
    with pytest.raises(ValueError, match="corrupt"):
        make_task("mfeat", data_path=str(bad))


def test_synthetic_is_seeded_and_weak_modality_is_not_linear():
    from sklearn.linear_model import LogisticRegression

    a, b = make_task("synthetic"), make_task("synthetic")
    assert torch.equal(a.splits["train"].features["weak"], b.splits["train"].features["weak"])
    assert a.modalities == ("dominant", "weak") and a.n_classes == 10
    train, test = a.splits["train"], a.splits["test"]
    linear_weak = LogisticRegression(max_iter=2000).fit(train.features["weak"], train.labels)
    assert linear_weak.score(test.features["weak"], test.labels) < 0.2  # chance is 0.1
    coarse = train.labels // 2
    linear_dominant = LogisticRegression(max_iter=2000).fit(train.features["dominant"], coarse)
    assert linear_dominant.score(test.features["dominant"], test.labels // 2) > 0.95
    three = make_task("synthetic", n_weak=2)
    assert three.modalities == ("dominant", "weak", "weak2")


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
    assert make_task("tests.tasks.test_mfeat:_tiny_task").name == "tiny"
    labels = torch.tensor([0, 5])
    with pytest.raises(ValueError, match="labels outside"):
        s = MultimodalSplit({"a": torch.zeros(2, 1), "b": torch.zeros(2, 1)}, labels)
        Task("bad", ("a", "b"), 2, {"train": s, "val": s, "test": s}, {"a": None, "b": None})
    with pytest.raises(ValueError, match="has 3 samples"):
        MultimodalSplit({"a": torch.zeros(3, 1)}, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        s = MultimodalSplit({"a": torch.full((2, 1), float("nan")), "b": torch.zeros(2, 1)}, torch.zeros(2).long())
        Task("bad", ("a", "b"), 2, {"train": s, "val": s, "test": s}, {"a": None, "b": None})
