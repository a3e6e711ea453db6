import pytest
import yaml

TINY_PPO = {"n_envs": 1, "n_timesteps": 64, "policy": "MlpPolicy", "n_steps": 32, "batch_size": 16, "n_epochs": 2,
            "learning_rate": "lin_1e-3", "normalize": "dict(norm_obs=True, norm_reward=False)",
            "policy_kwargs": "dict(net_arch=[16])"}
TINY_ENV = {"n_iterations": 40, "iterations_per_step": 10}


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory):
    """A PPO policy trained for 64 env steps on a 4-step synthetic env (shared by the policy tests)."""
    from dus_gym.experiments.train_policy import TrainPolicyConfig, train_policy

    root = tmp_path_factory.mktemp("policy")
    hp = root / "ppo.yml"
    hp.write_text(yaml.safe_dump({"dus_gym/Synthetic-v0": TINY_PPO}))
    config = TrainPolicyConfig(env_id="dus_gym/Synthetic-v0", hyperparams=str(hp), vec_env="dummy",
                               run_dir=str(root / "runs"), env_kwargs=TINY_ENV, eval_freq=32, checkpoint_freq=32,
                               evaluate=False, progress=False)
    folder = train_policy(config, argv=["train_policy.py"])
    return config, folder


TINY_FAMILY_PPO = {"n_envs": 1, "n_timesteps": 32, "policy": "ModalityPolicy", "n_steps": 16, "batch_size": 16,
                   "n_epochs": 2, "learning_rate": "lin_1e-3", "policy_kwargs": "dict(hidden=8)"}
TINY_FAMILY_ENV = {"n_iterations": 20, "iterations_per_step": 10, "task_kwargs": {"n_samples": 300, "hidden_dim": 8}}


@pytest.fixture(scope="session")
def tiny_family_policy(tmp_path_factory):
    """A ModalityPolicy trained for 32 env steps on a tiny SyntheticFamily-v0 (2 steps per episode)."""
    from dus_gym.experiments.train_policy import TrainPolicyConfig, train_policy

    root = tmp_path_factory.mktemp("family-policy")
    hp = root / "ppo.yml"
    hp.write_text(yaml.safe_dump({"dus_gym/SyntheticFamily-v0": TINY_FAMILY_PPO}))
    config = TrainPolicyConfig(env_id="dus_gym/SyntheticFamily-v0", hyperparams=str(hp), vec_env="dummy",
                               run_dir=str(root / "runs"), env_kwargs=TINY_FAMILY_ENV, eval_freq=0,
                               checkpoint_freq=32, evaluate=False, progress=False)
    return config, train_policy(config, argv=["train_policy.py"])


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tiny models, as every subproc and Ray env gets (two threads on two busy
    cores mostly wait for each other)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
