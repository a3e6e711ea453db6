"""Learner and run checkpoints: another format version, task or run config is refused; nothing is unpickled."""

import pickle

import pytest
import torch

from dus_gym.core.checkpoint import load_run_checkpoint
from dus_gym.core.config import LearnerConfig
from dus_gym.tasks import make_task


class Payload:
    def __reduce__(self):
        return (print, ("unpickled code ran",))


def test_learner_checkpoint_of_another_version_or_task(tmp_path):
    from dus_gym.core.learner import Learner

    task = make_task("synthetic", hidden_dim=8)
    learner = Learner(task, LearnerConfig(), seed=0)
    learner.save(tmp_path / "learner.pt")
    payload = torch.load(tmp_path / "learner.pt", weights_only=True)
    torch.save({**payload, "version": 99}, tmp_path / "v99.pt")
    with pytest.raises(ValueError, match="format version 99"):
        learner.load(tmp_path / "v99.pt")
    other = Learner(make_task("synthetic", hidden_dim=8, n_weak=2), LearnerConfig(), seed=0)
    with pytest.raises(ValueError, match="saved for task 'synthetic' with modalities \\['dominant', 'weak'\\]"):
        other.load(tmp_path / "learner.pt")


def test_learner_checkpoint_is_read_weights_only(tmp_path, capsys):
    from dus_gym.core.learner import Learner

    torch.save({"format": "dus-gym-learner", "version": 1, "state": Payload()}, tmp_path / "evil.pt")
    learner = Learner(make_task("synthetic", hidden_dim=8), LearnerConfig(), seed=0)
    with pytest.raises(ValueError, match="not a readable learner checkpoint"):
        learner.load(tmp_path / "evil.pt")
    assert "unpickled code ran" not in capsys.readouterr().out


def test_run_checkpoint_is_read_weights_only(tmp_path, capsys):
    from dus_gym.core.checkpoint import load_run_checkpoint

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump(Payload(), f, protocol=2)
    with pytest.raises(ValueError, match="not a readable run checkpoint"):
        load_run_checkpoint(tmp_path / "evil.pt", {})
    assert "unpickled code ran" not in capsys.readouterr().out


@pytest.mark.parametrize("change, message", [
    ({"seed": 6}, "differs in \\['seed'\\]"),
    ({"learner": {"lr": 0.01}}, "differs in \\['learner.lr'\\]"),
    ({"task": "mfeat"}, "differs in \\['task'\\]"),
])
def test_checkpoint_of_another_run_config_is_refused(tmp_path, change, message):
    from dus_gym.core.checkpoint import save_run_checkpoint
    from dus_gym.core.config import RunConfig, from_dict, to_dict
    from dus_gym.core.specs import deep_merge

    base = {"task": "synthetic", "n_iterations": 12}
    save_run_checkpoint(tmp_path / "checkpoint.pt", {"iteration": 3}, to_dict(from_dict(RunConfig, base)))
    assert load_run_checkpoint(tmp_path / "checkpoint.pt", to_dict(from_dict(RunConfig, base)))["iteration"] == 3
    other = to_dict(from_dict(RunConfig, deep_merge(base, change)))
    with pytest.raises(ValueError, match=message):
        load_run_checkpoint(tmp_path / "checkpoint.pt", other)
