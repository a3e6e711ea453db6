"""The ppo sampler: a saved policy of another shape or none, the commit control, and a policy on more
modalities than it was trained on."""

import pytest
import yaml

from dus_gym.cli import main
from dus_gym.core.config import RunConfig, from_dict
from dus_gym.experiments.family import case_config, family_config
from dus_gym.experiments.run import run_training
from dus_gym.samplers.ppo import PolicySampler
from dus_gym.tasks.families import TaskFamily

TINY = {"n_iterations": 20, "iterations_per_step": 10, "task_kwargs": {"n_samples": 300, "hidden_dim": 8}}


def test_policy_mismatch_and_missing(tiny_policy, tmp_path):
    _, folder = tiny_policy
    with pytest.raises(ValueError, match="trained for 2 modalities"):
        PolicySampler(64, 3, policy=str(folder))
    with pytest.raises(ValueError, match="B = 64"):
        PolicySampler(32, 2, policy=str(folder))
    with pytest.raises(FileNotFoundError, match="policy.zip"):
        PolicySampler(64, 2, policy=str(tmp_path))
    assert main(["run", "--sampler", "ppo", "--run-dir", str(tmp_path)]) == 2


@pytest.fixture(scope="module")
def tiny_strength_policy(tmp_path_factory):
    from dus_gym.experiments.train_policy import TrainPolicyConfig, train_policy

    root = tmp_path_factory.mktemp("strength-policy")
    hp = root / "ppo.yml"
    hp.write_text(yaml.safe_dump({"dus_gym/SyntheticFamily-v1": {
        "n_envs": 1, "n_timesteps": 16, "policy": "ModalityPolicy", "n_steps": 8, "batch_size": 8, "n_epochs": 1,
        "learning_rate": "lin_1e-3", "policy_kwargs": "dict(hidden=8, log_std_init=-1.0)"}}))
    config = TrainPolicyConfig(env_id="dus_gym/SyntheticFamily-v1", hyperparams=str(hp), vec_env="dummy",
                               run_dir=str(root / "runs"), env_kwargs={**TINY, "n_iterations": 40},
                               eval_freq=0, checkpoint_freq=16, evaluate=False, progress=False)
    return config, train_policy(config, argv=["train_policy.py"])


def test_commit_control_holds_the_counts_after_k_decisions(tiny_strength_policy):
    _, folder = tiny_strength_policy
    base = family_config("synthetic-family-v1.yaml", {"n_iterations": 40, "task_kwargs": TINY["task_kwargs"]})
    family = TaskFamily.from_config(base.task, base.task_kwargs, base.family)
    histories = {}
    for commit in (None, 1):
        kwargs = {"policy": str(folder), **({"commit_after": commit} if commit else {})}
        config = from_dict(RunConfig, case_config(base, family, 0, 0, "ppo", kwargs))
        histories[commit] = run_training(config, task=family.make(0), progress=False, probe=False).counts
    live, committed = histories[None], histories[1]
    assert (committed[10:] == committed[10]).all()  # held from the second decision (K = 10) on
    assert (committed[:10] == live[:10]).all()  # the first decision is the policy's own
    assert len({tuple(row) for row in live}) > 1  # the live policy's counts move with d_t: the control can differ


def test_a_three_slot_policy_drives_a_four_modality_instance(tiny_strength_policy):
    _, folder = tiny_strength_policy
    base = family_config("synthetic-family-ood.yaml", {"n_iterations": 20, "task_kwargs": TINY["task_kwargs"]})
    family = TaskFamily.from_config(base.task, base.task_kwargs, base.family)
    config = from_dict(RunConfig, case_config(base, family, 0, 0, "ppo", {"policy": str(folder)}))
    result = run_training(config, task=family.make(0), progress=False, probe=False)
    assert result.counts.shape == (20, 4) and (result.counts.sum(1) == 4 * 32).all()
