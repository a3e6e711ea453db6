"""A modality-agnostic sampling policy for SB3's PPO: one network shared by every modality (DeepSets).

On a "modalities" observation (:mod:`dus_gym.core.observation`), :class:`ModalityPolicy` encodes
every modality's row with one shared network phi, pools the encodings of the real modalities (a
mean over the mask) into a summary, and gives each modality its action from its own encoding and
the summary, with one shared head; the value function reads the summary. So:

- permuting the modalities permutes the actions (equivariance), and the value is unchanged;
- padded slots (mask 0) change nothing in the real modalities' actions or in the value;
- one trained policy acts on tasks of any M up to its number of slots, in any modality order, and
  (:meth:`ModalityPolicy.widened`) on tasks with more modalities than it was trained with.

With a one-entry action (the strength action: how strongly the DUS rule reacts), the action is read
from the summary and the globals instead (``pooled``), so it is invariant to the modality order.

The Gaussian's standard deviation is one parameter shared by every modality (a per-slot one would
treat slot positions differently). Observations are used as they are (bounded features): a
per-entry normalisation such as VecNormalize's would also treat slots differently.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import nn

from dus_gym.core.observation import GLOBAL_FEATURES, MODALITY_FEATURES
from dus_gym.core.registry import Registry

N_FEATURES, N_GLOBAL = len(MODALITY_FEATURES), len(GLOBAL_FEATURES)
MASK = MODALITY_FEATURES.index("mask")


def _mlp(sizes: list[int], activation: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), activation()]
    return nn.Sequential(*layers)


def split_observation(obs: torch.Tensor, n_slots: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(batch, size) observations -> per-slot rows (batch, slots, F), mask (batch, slots, 1), globals (batch, G)."""
    rows = obs[:, : n_slots * N_FEATURES].reshape(-1, n_slots, N_FEATURES)
    return rows, rows[:, :, MASK : MASK + 1], obs[:, n_slots * N_FEATURES :]


class ModalitySetNetwork(nn.Module):
    """The actor's and the critic's body: per-modality encodings, a masked-mean summary, per-modality latents.

    The actor's latent is the slots' latents side by side (batch, slots x hidden), which
    :class:`PerSlotHead` turns into one action per slot; the critic's latent is (batch, hidden).

    With ``pooled``, the actor's latent is (batch, hidden), from the summary and the globals: one action
    for the whole task.

    Args:
        n_slots: the modality slots of the observation.
        hidden: width of every layer.
        activation: the activation between layers.
        pooled: one action from the summary (True) or one per slot (False).
    """

    def __init__(self, n_slots: int, hidden: int = 64, activation: type[nn.Module] = nn.Tanh,
                 pooled: bool = False) -> None:
        super().__init__()
        self.n_slots = n_slots
        self.pooled = pooled
        self.encoder = _mlp([N_FEATURES + N_GLOBAL, hidden, hidden], activation)
        self.actor = _mlp([hidden + N_GLOBAL if pooled else 2 * hidden, hidden], activation)
        self.critic = _mlp([hidden + N_GLOBAL, hidden, hidden], activation)
        self.latent_dim_pi = hidden if pooled else n_slots * hidden
        self.latent_dim_vf = hidden

    def encode(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-slot encodings (batch, slots, hidden), the summary (batch, hidden) and the globals."""
        rows, mask, globals_ = split_observation(obs, self.n_slots)
        encoded = self.encoder(torch.cat([rows, globals_.unsqueeze(1).expand(-1, self.n_slots, -1)], dim=2))
        summary = (encoded * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return encoded, summary, globals_

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The actor's and the critic's latents."""
        encoded, summary, globals_ = self.encode(obs)
        return self._actor(encoded, summary, globals_), self.critic(torch.cat([summary, globals_], dim=1))

    def forward_actor(self, obs: torch.Tensor) -> torch.Tensor:
        """The actor's latent (batch, slots x hidden), or (batch, hidden) when pooled."""
        return self._actor(*self.encode(obs))

    def forward_critic(self, obs: torch.Tensor) -> torch.Tensor:
        """The critic's latent (batch, hidden)."""
        _, summary, globals_ = self.encode(obs)
        return self.critic(torch.cat([summary, globals_], dim=1))

    def _actor(self, encoded: torch.Tensor, summary: torch.Tensor, globals_: torch.Tensor) -> torch.Tensor:
        if self.pooled:
            return self.actor(torch.cat([summary, globals_], dim=1))
        latent = self.actor(torch.cat([encoded, summary.unsqueeze(1).expand_as(encoded)], dim=2))
        return latent.flatten(1)


class PerSlotHead(nn.Module):
    """One linear map shared by every slot: (batch, slots x hidden) -> one action per slot (batch, slots)."""

    def __init__(self, n_slots: int, hidden: int) -> None:
        super().__init__()
        self.n_slots = n_slots
        self.linear = nn.Linear(hidden, 1)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """The slots' action means."""
        return self.linear(latent.view(len(latent), self.n_slots, -1)).squeeze(2)


class ModalityPolicy(ActorCriticPolicy):
    """SB3 actor-critic policy over a "modalities" observation (see the module docstring).

    Takes the arguments of ``ActorCriticPolicy`` (``net_arch`` is not used) and:

    Args:
        observation_space: a Box of a "modalities" observation.
        action_space: a Box with one entry per modality slot, or a one-entry Box (read from the summary).
        lr_schedule: the learning-rate schedule.
        hidden: width of the shared networks.
        **kwargs: the other ``ActorCriticPolicy`` arguments (activation_fn, log_std_init, ortho_init...).
    """

    def __init__(self, observation_space: gym.spaces.Box, action_space: gym.spaces.Box, lr_schedule: Any,
                 hidden: int = 64, **kwargs: Any) -> None:
        size = observation_space.shape[0] - N_GLOBAL
        if len(observation_space.shape) != 1 or size <= 0 or size % N_FEATURES:
            raise ValueError(f"ModalityPolicy needs a 'modalities' observation (slots x {N_FEATURES} + {N_GLOBAL} "
                             f"entries), got shape {observation_space.shape}: set env.observation: modalities")
        self.n_slots = size // N_FEATURES
        if not isinstance(action_space, gym.spaces.Box) or action_space.shape not in ((self.n_slots,), (1,)):
            raise ValueError(f"ModalityPolicy needs a Box action with one entry per slot ({self.n_slots}) or one "
                             f"entry, got {action_space}")
        self.pooled = action_space.shape == (1,)
        self.hidden = hidden
        kwargs.setdefault("net_arch", [])
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)

    def _build_mlp_extractor(self) -> None:
        self.mlp_extractor = ModalitySetNetwork(self.n_slots, self.hidden, self.activation_fn, self.pooled)

    def _build(self, lr_schedule: Any) -> None:
        super()._build(lr_schedule)
        if self.pooled:  # SB3's own linear action net on the (batch, hidden) latent
            return
        self.action_net = PerSlotHead(self.n_slots, self.hidden)
        self.log_std = nn.Parameter(torch.full((1,), float(self.log_std_init)))
        if self.ortho_init:
            nn.init.orthogonal_(self.action_net.linear.weight, gain=0.01)
            nn.init.zeros_(self.action_net.linear.bias)
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data["hidden"] = self.hidden
        return data

    def widened(self, n_slots: int) -> ModalityPolicy:
        """The same policy (same parameters) on ``n_slots`` >= its slots: for tasks with more modalities.

        No parameter depends on the number of slots, so the widened policy acts on the first slots of a
        wider observation exactly as this one does, and on the others as on any modality.
        """
        if n_slots < self.n_slots:
            raise ValueError(f"cannot narrow a policy of {self.n_slots} slots to {n_slots}")
        low, high = self.observation_space.low, self.observation_space.high
        row_low, row_high = low[:N_FEATURES], high[:N_FEATURES]
        observation_space = gym.spaces.Box(np.concatenate([np.tile(row_low, n_slots), low[-N_GLOBAL:]]),
                                           np.concatenate([np.tile(row_high, n_slots), high[-N_GLOBAL:]]),
                                           dtype=np.float32)
        action_space = (self.action_space if self.pooled
                        else gym.spaces.Box(-1.0, 1.0, shape=(n_slots,), dtype=np.float32))
        data = self._get_constructor_parameters()
        data.update(observation_space=observation_space, action_space=action_space)
        wide = type(self)(**data)
        wide.load_state_dict(self.state_dict())
        return wide.to(self.device)


POLICIES: Registry[type[ActorCriticPolicy]] = Registry("policy", {
    "ModalityPolicy": ModalityPolicy, "dus_gym.agents.policies.ModalityPolicy": ModalityPolicy})
"""dus-gym's policy classes by the name agents/ppo.yml gives them (SB3's own names, e.g. MlpPolicy, pass through).

agents/ppo.yml names ModalityPolicy by its dotted path, which the RL Zoo imports itself (it resolves a
policy name holding a dot with ``get_class_by_name``), so ``python -m rl_zoo3.train --env
dus_gym/SyntheticFamily-v1 --gym-packages dus_gym -conf agents/ppo.yml`` trains it; here the path is
looked up in this table, nothing is imported by name."""
