"""The modality-agnostic policy: equivariant to the modality order, blind to padding, widened to more slots."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import PPO

from dus_gym.agents.policies import ModalityPolicy
from dus_gym.core.observation import GLOBAL_FEATURES, MODALITY_FEATURES
from dus_gym.envs.env import DUSEnv

TINY = {"n_iterations": 20, "iterations_per_step": 10, "task_kwargs": {"n_samples": 300, "hidden_dim": 8}}


def family_env(**kwargs) -> DUSEnv:
    return gym.make("dus_gym/SyntheticFamily-v0", **{**TINY, **kwargs}).unwrapped


@pytest.fixture(scope="module")
def policy():
    env = family_env()
    return PPO(ModalityPolicy, env, n_steps=8, batch_size=8, device="cpu", seed=0,
               policy_kwargs={"hidden": 16, "ortho_init": False}).policy


def _actions(policy, obs):
    with torch.no_grad():
        o = torch.as_tensor(np.asarray(obs, np.float32))
        return policy.get_distribution(o).distribution.mean.numpy(), policy.predict_values(o).numpy()


def test_policy_is_equivariant_to_modality_order_and_blind_to_padding(policy):
    rng = np.random.default_rng(0)
    rows = rng.uniform(-1, 1, size=(5, 3, len(MODALITY_FEATURES)))
    rows[..., -1] = 1.0
    rows[:, 2, -1] = 0.0  # the third slot is padding
    g = rng.uniform(0, 1, size=(5, len(GLOBAL_FEATURES)))
    obs = np.concatenate([rows.reshape(5, -1), g], 1)
    actions, values = _actions(policy, obs)
    swapped = np.concatenate([rows[:, [1, 0, 2]].reshape(5, -1), g], 1)
    a2, v2 = _actions(policy, swapped)
    np.testing.assert_allclose(a2[:, [1, 0]], actions[:, :2], atol=1e-6)  # permuting modalities permutes actions
    np.testing.assert_allclose(v2, values, atol=1e-6)
    noisy = rows.copy()
    noisy[:, 2, :-1] = rng.uniform(-1, 1, size=(5, len(MODALITY_FEATURES) - 1))  # garbage in the padded slot
    a3, v3 = _actions(policy, np.concatenate([noisy.reshape(5, -1), g], 1))
    np.testing.assert_allclose(a3[:, :2], actions[:, :2], atol=1e-6)
    np.testing.assert_allclose(v3, values, atol=1e-6)
    assert np.abs(actions[:, 0] - actions[:, 1]).max() > 1e-4  # and the actions do depend on the rows
    assert policy.log_std.shape == (1,)


def test_policy_widens_to_more_modalities_and_pools_a_strength_action():
    obs3 = gym.spaces.Box(-1.0, 1.0, (3 * len(MODALITY_FEATURES) + len(GLOBAL_FEATURES),), np.float32)
    policy = ModalityPolicy(obs3, gym.spaces.Box(-1.0, 1.0, (1,), np.float32), lambda _: 1e-3, hidden=8)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.3 * torch.randn_like(p))
    rows = torch.rand(2, len(MODALITY_FEATURES))
    rows[:, MODALITY_FEATURES.index("mask")] = 1.0
    g = torch.rand(len(GLOBAL_FEATURES))

    def observation(rows: torch.Tensor, slots: int) -> torch.Tensor:
        padded = torch.zeros(slots, len(MODALITY_FEATURES))
        padded[: len(rows)] = rows
        return torch.cat([padded.reshape(-1), g])[None]

    a = policy.get_distribution(observation(rows, 3)).distribution.mean
    swapped = policy.get_distribution(observation(rows.flip(0), 3)).distribution.mean
    assert torch.allclose(a, swapped, atol=1e-6)  # one action for the task, whatever the modality order
    wide = policy.widened(4)
    assert wide.observation_space.shape == (4 * len(MODALITY_FEATURES) + len(GLOBAL_FEATURES),)
    assert torch.allclose(wide.get_distribution(observation(rows, 4)).distribution.mean, a, atol=1e-6)
    with pytest.raises(ValueError, match="narrow"):
        wide.widened(3)
