import torch

from dus_gym.tasks import make_task


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
