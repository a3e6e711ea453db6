import numpy as np
import pytest
import torch

from dus_gym.tasks import make_task
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
