"""The vec-env kinds: devices per env, subprocess envs pinned to them, training on the vectorised env and
through Ray actors (equal to DummyVecEnv)."""

import numpy as np
import pytest
import yaml
from stable_baselines3.common.monitor import Monitor

from dus_gym.core.config import ConfigError
from dus_gym.envs.vector import kinds as parallel
from dus_gym.envs.vector.kinds import build_vec_env
from dus_gym.experiments.train_policy import TrainPolicyConfig, train_policy

TINY_TASK = {"n_samples": 300, "dominant_dim": 32, "weak_dim": 4, "hidden_dim": 16}
TINY_ENV = {"n_iterations": 4, "iterations_per_step": 2, "n_max": 64, "task_kwargs": TINY_TASK,
            "learner": {"batch_size": 16}}
TINY_PPO = {"n_envs": 2, "n_timesteps": 256, "policy": "MlpPolicy", "n_steps": 32, "batch_size": 32, "n_epochs": 2,
            "normalize": "dict(norm_obs=True, norm_reward=False)", "policy_kwargs": "dict(net_arch=[16])"}


def test_devices_round_robin_and_default_to_visible_gpus(monkeypatch):
    assert parallel.assign_devices(5, ["cuda:0", "cuda:1"]) == ["cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]
    with pytest.raises(ConfigError, match="empty"):
        parallel.assign_devices(2, [])
    monkeypatch.setattr(parallel, "visible_gpus", lambda: ["cuda:0", "cuda:1", "cuda:2"])
    gpu = {"learner": {"device": "cuda"}}
    assert parallel.env_devices("dus_gym/Synthetic-v0", 4, gpu, None) == ["cuda:0", "cuda:1", "cuda:2", "cuda:0"]
    assert parallel.env_devices("dus_gym/Synthetic-v0", 2, {}, None) == [None, None]  # a cpu learner stays put
    assert parallel.env_devices("dus_gym/Synthetic-v0", 3, {}, ("cpu", "cuda:1")) == ["cpu", "cuda:1", "cpu"]


def test_subproc_envs_are_pinned_to_the_device_list(monkeypatch):
    # the spec asks for "cuda"; the mocked GPU list pins every env's learner to a cpu entry instead
    monkeypatch.setattr(parallel, "visible_gpus", lambda: ["cpu", "cpu"])
    env_kwargs = {**TINY_ENV, "learner": {"batch_size": 16, "device": "cuda"}}
    venv = build_vec_env("dus_gym/Synthetic-v0", 2, 0, env_kwargs, "subproc")
    try:
        assert [c.device for c in venv.get_attr("learner_config")] == ["cpu", "cpu"]
        assert [c.batch_size for c in venv.get_attr("learner_config")] == [16, 16]  # the rest of learner is kept
        venv.reset()
        obs, rewards, dones, infos = venv.step(np.zeros((2, 2), dtype=np.float32))
        assert obs.shape == (2, 9) and infos[0]["iteration"] == 2
    finally:
        venv.close()
    with pytest.raises(ConfigError, match="one device"):
        build_vec_env("dus_gym/Synthetic-v0", 2, 0, TINY_ENV, "vectorized", devices=("cpu", "cuda:0"))


def _train(tmp_path, vec_env, **extra):
    hp = tmp_path / "ppo.yml"
    hp.write_text(yaml.safe_dump({"dus_gym/Synthetic-v0": TINY_PPO}))
    config = TrainPolicyConfig(env_id="dus_gym/Synthetic-v0", hyperparams=str(hp), vec_env=vec_env,
                               run_dir=str(tmp_path / "runs"), env_kwargs=TINY_ENV, checkpoint_freq=256,
                               evaluate=False, progress=False, **{"eval_freq": 0, **extra})
    return train_policy(config, argv=["train_policy.py"])


def test_train_policy_with_the_vectorised_env(tmp_path, one_torch_thread):
    # with the EvalCallback and VecNormalize: the eval env must mirror the training env's wrappers
    folder = _train(tmp_path, "vectorized", eval_freq=32)
    assert (folder / "policy.zip").is_file() and (folder / "vecnormalize.pkl").is_file()
    assert (folder / "eval" / "evaluations.npz").is_file()
    assert any((folder / "tb").rglob("events.*"))


def test_train_policy_through_ray_actors_on_a_local_runtime(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")  # offline CI: no usage report
    init = {"num_cpus": 2, "include_dashboard": False, "_node_ip_address": "127.0.0.1", "log_to_driver": False,
            "configure_logging": False}
    try:
        folder = _train(tmp_path, "ray", ray={"num_cpus_per_env": 1, "init_kwargs": init})
        assert ray.is_initialized()
        assert ray.cluster_resources()["CPU"] == 2
        # the actors step as DummyVecEnv steps the same envs: same seeds, same actions, same results
        actors = build_vec_env("dus_gym/Synthetic-v0", 2, 3, TINY_ENV, "ray")
        local = build_vec_env("dus_gym/Synthetic-v0", 2, 3, TINY_ENV, "dummy")
        try:
            assert actors.env_is_wrapped(Monitor) == [True, True]
            np.testing.assert_array_equal(actors.reset(), local.reset())
            for a in ([0.5, -0.5], [-1.0, 1.0], [0.0, 0.0]):
                action = np.array([a, a], dtype=np.float32)
                (obs, rew, done, info), (obs_l, rew_l, done_l, info_l) = actors.step(action), local.step(action)
                np.testing.assert_array_equal(obs, obs_l)
                np.testing.assert_array_equal(rew, rew_l)
                assert done.tolist() == done_l.tolist()
                assert info_l[0]["counts"].tolist() == info[0]["counts"].tolist()
                if done.all():  # the second step ends the 4-iteration episode: auto-reset in the actor
                    np.testing.assert_array_equal(info[1]["terminal_observation"], info_l[1]["terminal_observation"])
                    assert "episode" in info[1] and not info[1]["TimeLimit.truncated"]
            assert actors.reset_infos[0]["learner_seed"] == local.reset_infos[0]["learner_seed"]
        finally:
            actors.close()
            local.close()
    finally:
        ray.shutdown()
    from stable_baselines3 import PPO

    model = PPO.load(folder / "policy.zip", device="cpu")
    assert model.num_timesteps == 256
