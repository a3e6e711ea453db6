"""The Gymnasium-native vector env: gymnasium.make_vec with the vector entry point equals N separate envs."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

import dus_gym  # noqa: F401 (registers the ids)
from dus_gym.core.config import ConfigError
from dus_gym.envs.vector.gymnasium_vector_env import DUSVectorEnv
from tests.helpers import ENV_KWARGS

TINY = {"n_iterations": 20, "iterations_per_step": 10, "task_kwargs": {"n_samples": 300, "hidden_dim": 8}}
ENV_ID = "dus_gym/Synthetic-v0"


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _assert_infos_equal(a, b, path="info"):
    assert set(a) == set(b), path
    for key in a:
        if isinstance(a[key], dict):
            _assert_infos_equal(a[key], b[key], f"{path}.{key}")
        elif key == "final_obs":
            for x, y in zip(a[key], b[key], strict=True):
                assert (x is None) == (y is None)
                if x is not None:
                    np.testing.assert_allclose(y, x, atol=1e-5)
        else:
            np.testing.assert_allclose(np.asarray(b[key], dtype=float), np.asarray(a[key], dtype=float), atol=1e-5,
                                       err_msg=f"{path}.{key}")


def _rollout(envs, actions, seed=3):
    out = [envs.reset(seed=seed)]
    for a in actions:
        out.append(envs.step(a))
    return out


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_make_vec_returns_a_batched_vector_env_equal_to_separate_envs(mode):
    n = 3
    batched = gym.make_vec(ENV_ID, num_envs=n, vectorization_mode="vector_entry_point", autoreset_mode=mode, **TINY)
    assert isinstance(batched.unwrapped, DUSVectorEnv) and isinstance(batched, gym.vector.VectorEnv)
    assert batched.metadata["autoreset_mode"] == mode
    separate = gym.make_vec(ENV_ID, num_envs=n, vectorization_mode="sync", vector_kwargs={"autoreset_mode": mode},
                            **TINY)
    assert batched.single_observation_space == separate.single_observation_space
    assert batched.action_space == separate.action_space and batched.observation_space == separate.observation_space
    rng = np.random.default_rng(0)
    actions = [rng.uniform(-1, 1, size=(n, 2)).astype(np.float32) for _ in range(5)]  # 2 episodes and a bit
    a_steps, b_steps = _rollout(separate, actions), _rollout(batched, actions)
    for k, (a, b) in enumerate(zip(a_steps, b_steps, strict=True)):
        np.testing.assert_allclose(b[0], a[0], atol=1e-5)
        assert b[0].dtype == np.float32 and batched.observation_space.contains(b[0])
        if k:
            np.testing.assert_allclose(b[1], a[1], atol=1e-5)
            assert b[2].tolist() == a[2].tolist() and b[3].tolist() == a[3].tolist()
        _assert_infos_equal(a[-1], b[-1])
    ends = [bool(s[2].any()) for s in b_steps[1:]]  # two steps per episode; the rollout crosses auto-resets
    if mode == AutoresetMode.NEXT_STEP:
        assert ends == [False, True, False, False, True]  # the step after an end resets: reward 0, first obs
        assert b_steps[3][1].tolist() == [0, 0, 0] and "learner_seed" in b_steps[3][-1]
        assert b_steps[3][0][:, -1].tolist() == [0, 0, 0]  # progress 0
    else:
        assert ends == [False, True, False, True, False]
        assert b_steps[2][-1]["_final_obs"].all() and "val_acc" in b_steps[2][-1]["final_info"]


def test_default_make_vec_uses_the_vector_entry_point_and_disabled_mode_needs_reset_mask():
    envs = gym.make_vec(ENV_ID, num_envs=2, autoreset_mode="Disabled", render_mode="ansi", **TINY)
    assert isinstance(envs.unwrapped, DUSVectorEnv)
    envs.reset(seed=0)
    a = np.zeros((2, 2), dtype=np.float32)
    envs.step(a)
    frames = envs.render()  # one line per env: the step just run, with its counts (action 0: 132 each)
    assert len(frames) == 2 and all(f.startswith("step   1 | iteration    10/20 | counts dominant=132 weak=132")
                                    for f in frames)
    _, _, terminated, _, _ = envs.step(a)
    assert terminated.all()
    with pytest.raises(RuntimeError, match="call reset"):
        envs.step(a)
    obs, info = envs.reset(options={"reset_mask": np.array([True, False])})
    assert obs[0, -1] == 0 and obs[1, -1] == 1 and info["_learner_seed"].tolist() == [True, False]
    with pytest.raises(ValueError, match="reset_mask"):
        envs.reset(options={"reset_mask": np.array([1, 0])})
    with pytest.raises(ValueError, match="autoreset_mode"):
        gym.make_vec(ENV_ID, num_envs=2, autoreset_mode="later", **TINY)


def test_on_disk_specs_keep_sync_make_vec():
    assert gym.spec("dus_gym/CremaD-v0").vector_entry_point is None
    assert gym.spec("dus_gym/MFeat-v0").vector_entry_point is not None
    with pytest.raises(ConfigError, match="vectorization_mode='sync'"):
        gym.make_vec(ENV_ID, num_envs=2, learner={"optimizer": "adam"}, **TINY)


@pytest.mark.parametrize("action", [np.array([[0.5 + 1j, 0.0], [0.0, 0.0]]), np.array([["a", "b"], ["c", "d"]]),
                                    np.full((2, 2), np.nan, np.float32)])
def test_vector_env_actions_of_envs_about_to_reset_are_checked_too(action):
    from dus_gym.envs.vector.gymnasium_vector_env import DUSVectorEnv
    from dus_gym.samplers.action import ActionError

    env = DUSVectorEnv(2, **ENV_KWARGS)  # next-step auto-reset: an ended env's next action is not acted on
    env.reset(seed=0)
    zeros = np.zeros((2, 2), np.float32)
    while not env.step(zeros)[2].all():
        pass
    with pytest.raises(ActionError, match="expected an action in Box"):
        env.step(action)
