"""The evaluation env of a policy-training run and the score of a trained policy on it.

``train_policy.py`` (through SB3's ``EvalCallback``) and ``dus-gym tune ppo`` evaluate on the same
kind of env: one env, of the kind the training envs are (batched or not), seeded
:data:`EVAL_SEED_OFFSET` above the run's seed, and, when the training envs are normalised, a
``VecNormalize`` that does not update its statistics and reads the training env's
(:func:`stable_baselines3.common.vec_env.sync_envs_normalization`, as ``EvalCallback`` does at every
evaluation).
"""

from __future__ import annotations

from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv, VecMonitor, VecNormalize, sync_envs_normalization

from dus_gym.envs.vector.kinds import build_vec_env

EVAL_SEED_OFFSET = 10_000
"""The evaluation env's first episode is seeded this far above the run's seed, away from the training envs'."""


def make_eval_env(env_id: str, seed: int, env_kwargs: dict[str, Any], train_venv: VecEnv) -> VecEnv:
    """One env of ``env_id`` that mirrors ``train_venv``'s wrappers, seeded ``seed + EVAL_SEED_OFFSET``.

    Args:
        env_id: the registered DUS env id the policy trains on.
        seed: the run's seed.
        env_kwargs: the overrides of the env's spec the training envs use.
        train_venv: the training envs (a ``VecNormalize`` around them is mirrored, statistics synced).
    """
    inner = train_venv.venv if isinstance(train_venv, VecNormalize) else train_venv
    kind = "vectorized" if isinstance(inner, VecMonitor) else "dummy"
    eval_venv = build_vec_env(env_id, 1, seed + EVAL_SEED_OFFSET, env_kwargs, kind)
    if isinstance(train_venv, VecNormalize):
        eval_venv = VecNormalize(eval_venv, training=False, norm_obs=train_venv.norm_obs, norm_reward=False)
        sync_envs_normalization(train_venv, eval_venv)
    return eval_venv


def final_val_accuracy(model: BaseAlgorithm, venv: VecEnv, n_episodes: int) -> list[float]:
    """The final fused validation accuracy of ``n_episodes`` deterministic episodes of ``model`` on ``venv`` (1 env).

    An episode is one training run of the learner, so its last validation accuracy is what the
    policy achieved; the episode return is a sum of shaped rewards (docs/env.md).
    """
    if isinstance(model.get_env(), VecNormalize) and isinstance(venv, VecNormalize):
        sync_envs_normalization(model.get_env(), venv)
    scores: list[float] = []
    obs = venv.reset()
    while len(scores) < n_episodes:
        action, _ = model.predict(obs, deterministic=True)
        obs, _, dones, infos = venv.step(action)
        if dones[0]:
            scores.append(float(infos[0].get("val_acc", 0.0)))
    return scores
