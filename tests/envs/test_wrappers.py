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
