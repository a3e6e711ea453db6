"""The vec-env kinds: devices per env, subprocess envs pinned to them, training on the vectorised env and
through Ray actors (equal to DummyVecEnv)."""

import numpy as np
import pytest
import yaml
from stable_baselines3.common.monitor import Monitor

from dus_gym.core.config import ConfigError
from dus_gym.envs.vector import kinds as parallel
from dus_gym.envs.vector.batched import VecDUSEnv
from dus_gym.envs.vector.kinds import build_vec_env
from dus_gym.experiments.train_policy import TrainPolicyConfig, train_policy
from tests.helpers import only

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


def test_batched_is_faster_weighs_the_batched_iteration_against_subprocesses_on_the_cores():
    # 8 learners: 10 ms batched; one alone 5 ms, so 8 subprocess envs take 5 ms x ceil(8 / cores)
    assert parallel.batched_is_faster(0.010, 0.005, 8, cores=2)  # 20 ms on 2 cores
    assert not parallel.batched_is_faster(0.010, 0.005, 8, cores=8)  # 5 ms on 8 cores
    assert not parallel.batched_is_faster(0.010, 0.005, 1, cores=2)  # one env: 5 ms alone
    assert parallel.batched_is_faster(0.005, 0.005, 1, cores=2)  # a tie keeps the batched kind


def test_auto_builds_the_kind_measured_faster_and_leaves_the_env_untouched(monkeypatch, one_torch_thread):
    import torch

    venv = build_vec_env("dus_gym/Synthetic-v0", 2, 0, TINY_ENV, "vectorized").unwrapped
    before = {k: v.detach().clone() for k, v in venv.learners.params.items()}
    rng = torch.get_rng_state()
    batched, single = parallel.learner_iteration_times(venv, iterations=2)
    assert batched > 0 and single > 0
    assert all(torch.equal(before[k], v) for k, v in venv.learners.params.items())  # fresh learners were timed
    assert torch.equal(rng, torch.get_rng_state())
    built = []
    monkeypatch.setattr(parallel, "build_subproc", lambda *args: built.append("subproc") or "subproc env")
    monkeypatch.setattr(parallel, "usable_cores", lambda: 2)
    monkeypatch.setattr(parallel, "learner_iteration_times", lambda venv: (0.030, 0.010))  # 2 envs: 10 ms apart
    assert parallel.build_auto("dus_gym/Synthetic-v0", 2, 0, TINY_ENV) == "subproc env"
    monkeypatch.setattr(parallel, "learner_iteration_times", lambda venv: (0.008, 0.010))
    assert isinstance(parallel.build_auto("dus_gym/Synthetic-v0", 2, 0, TINY_ENV).unwrapped, VecDUSEnv)
    # not batchable (Adam): subprocess envs without a measurement
    monkeypatch.setattr(parallel, "learner_iteration_times", lambda venv: pytest.fail("measured"))
    adam = {**TINY_ENV, "learner": {"batch_size": 16, "optimizer": "adam"}}
    assert parallel.build_auto("dus_gym/Synthetic-v0", 2, 0, adam) == "subproc env" and built == ["subproc"] * 2


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


def test_the_documented_ray_command_trains_through_actors_on_an_in_process_runtime(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    from dus_gym.cli import main

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")  # offline CI: no usage report
    hp = tmp_path / "ppo.yml"
    hp.write_text(yaml.safe_dump({"dus_gym/Synthetic-v0": TINY_PPO}))
    env_kwargs = ["n_iterations=4", "iterations_per_step=2", "n_max=64", "learner.batch_size=16",
                  *(f"task_kwargs.{k}={v}" for k, v in TINY_TASK.items())]
    # the local runtime in this process (what a bare `ray.init()` starts), bound to loopback for an offline CI
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             configure_logging=False)
    try:
        # docs/policies.md: python train_policy.py --vec-env ray --ray-cpus-per-env 1
        assert main(["train-policy", "--env", "dus_gym/Synthetic-v0", "--vec-env", "ray", "--ray-cpus-per-env", "1",
                     "-conf", str(hp), "--env-kwargs", *env_kwargs, "--run-dir", str(tmp_path / "runs"),
                     "--eval-freq", "0", "--checkpoint-freq", "256", "--no-evaluate", "--no-progress"]) == 0
        assert ray.cluster_resources()["CPU"] == 2
        folder = only(tmp_path / "runs", "ppo-Synthetic-v0-seed0_*")
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
