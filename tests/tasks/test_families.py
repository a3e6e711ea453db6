"""Task families: the fixed split, the instance draws, groups held out by view set, the out-of-distribution
ranges."""

import numpy as np
import pytest

from dus_gym.core.config import FamilyConfig
from dus_gym.experiments.family import family_config
from dus_gym.tasks.families import TaskFamily, mfeat_family, synthetic_family


def test_family_split_and_instances():
    family = TaskFamily.from_config("synthetic", {"hidden_dim": 8},
                                    FamilyConfig(generator="synthetic", generator_kwargs={"n_instances": 40}))
    assert len(family.held_out) == 10 and set(family.held_out).isdisjoint(family.train)
    assert sorted([*family.held_out, *family.train]) == list(range(40))
    again = TaskFamily.from_config("synthetic", {}, FamilyConfig(generator="synthetic",
                                                                 generator_kwargs={"n_instances": 40}))
    assert again.held_out == family.held_out and again.instances == family.instances  # fixed, documented split
    assert family.task_kwargs(3)["hidden_dim"] == 8 and family.task_kwargs(3)["data_seed"] == family.instances[3][
        "data_seed"]
    draws = synthetic_family(200, seed=1)
    assert {d["n_weak"] for d in draws} == {1, 2} and {d["dominant_slot"] for d in draws} == {0, 1, 2}
    assert 0.2 < np.mean([d["dominant_fine_signal"] > 0 for d in draws]) < 0.5  # harmless instances exist
    views = mfeat_family()
    assert len(views) == 30 + 120 and {"views": ["fou", "pix"]} in views and {"views": ["pix", "fou"]} in views


def test_held_out_by_view_set_shares_no_set_with_training():
    family = TaskFamily.from_config("mfeat", {}, FamilyConfig(generator="mfeat", held_out=0.25, group_by="views"))
    train = {frozenset(family.instances[i]["views"]) for i in family.train}
    held = {frozenset(family.instances[i]["views"]) for i in family.held_out}
    assert not train & held and 0.2 < len(family.held_out) / len(family.instances) < 0.35
    with pytest.raises(ValueError, match="no such task kwarg"):
        TaskFamily.from_config("mfeat", {}, FamilyConfig(instances=({"views": ["fac"]}, {"x": 1}), group_by="views"))
    assert len(mfeat_family()) == 150


def test_synthetic_family_defaults_and_out_of_distribution_ranges():
    default = synthetic_family()
    assert {1 + x["n_weak"] for x in default} == {2, 3} and {x["dominant_dim"] for x in default} == {256, 512}
    assert min(x["weak_signal"] for x in default) >= 1.5
    ood = TaskFamily.from_config("synthetic", {}, family_config("synthetic-family-ood.yaml").family)
    assert {1 + x["n_weak"] for x in ood.instances} == {4} and {x["dominant_dim"] for x in ood.instances} == {1024}
    assert max(x["weak_signal"] for x in ood.instances) <= 1.5 and ood.held_out == ()
    with pytest.raises(ValueError, match="M >= 2"):
        synthetic_family(modalities=(1,))
