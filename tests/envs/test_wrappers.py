"""The error-recovery wrapper: env failures are absorbed, three in a row stop the run."""

import numpy as np
import pytest


def test_three_env_failures_in_a_row_stop_the_run_as_documented():
    import gymnasium as gym

    from dus_gym.envs.wrappers import ErrorRecoveryWrapper

    class Broken(gym.Env):
        observation_space = gym.spaces.Box(-1, 1, (1,))
        action_space = gym.spaces.Box(-1, 1, (1,))
        steps = 0

        def reset(self, *, seed=None, options=None):
            return np.zeros(1, np.float32), {}

        def step(self, action):
            Broken.steps += 1
            raise RuntimeError("broken")

    env = ErrorRecoveryWrapper(Broken())
    env.reset()
    for _ in range(2):  # absorbed: truncated transitions
        assert env.step(np.zeros(1))[3] is True
    with pytest.raises(RuntimeError, match="broken"):
        env.step(np.zeros(1))
    assert Broken.steps == 3


def test_dict_observation_passes_both_checkers_and_trains_with_multi_input_policy():
    import gymnasium as gym
    from gymnasium.utils.env_checker import check_env as gym_check_env
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    from dus_gym.envs.wrappers import DictObservation

    tiny = {"n_iterations": 40, "iterations_per_step": 20, "task_kwargs": {"n_samples": 300, "hidden_dim": 8}}
    env = DictObservation(gym.make("dus_gym/SyntheticFamily-v1", **tiny))
    with pytest.warns(UserWarning, match="different from the unwrapped"):  # checked as a user sees it: wrapped
        gym_check_env(env, skip_render_check=True)
    sb3_check_env(env)
    obs, _ = env.reset(seed=0)
    flat, _ = gym.make("dus_gym/SyntheticFamily-v1", **tiny).reset(seed=0)  # the same run, the flat vector
    rows = flat[:24].reshape(3, 8)
    np.testing.assert_array_equal(obs["modalities"], rows[:, :7])  # the features, then the mask, per slot
    np.testing.assert_array_equal(obs["mask"], rows[:, 7].astype(np.int8))
    np.testing.assert_array_equal(obs["global"], flat[24:])
    assert obs["mask"].sum() == env.unwrapped.n_modalities
    model = PPO("MultiInputPolicy", env, n_steps=64, batch_size=64, n_epochs=2, seed=0, device="cpu")
    model.learn(total_timesteps=256)
    assert model.num_timesteps == 256
    action, _ = model.predict(obs, deterministic=True)
    assert env.action_space.contains(action)
    with pytest.raises(ValueError, match="observation='modalities'"):
        DictObservation(gym.make("dus_gym/Synthetic-v0", **tiny))
