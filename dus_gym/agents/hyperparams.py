"""Agent hyper-parameters in the RL Zoo's YAML form (agents/ppo.yml), parsed without eval.

Each top-level key is an env id; inner keys are PPO keyword arguments plus the
runner keys ``n_envs``, ``n_timesteps``, ``normalize``, ``policy`` and ``env_kwargs``. Schedules
are written ``lin_<value>``; ``policy_kwargs`` and ``normalize`` may be mappings or the Zoo's
``"dict(...)"`` strings, which are parsed as literals (names limited to torch activations).

The shipped agents/ppo.yml holds one entry per env id, as the RL Zoo reads it. An env id without
an entry (a user's spec, a new family) falls back, in dus-gym only, to the file's ``default`` entry
when it has one (as recent Zoo versions also do), else to :data:`FALLBACK_HYPERPARAMS` when the
caller passes it (``train_policy`` does for the shipped file); the Zoo itself needs an entry per
id (``dus-gym tune ppo`` writes one).
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.utils import LinearSchedule
from torch import nn

from dus_gym.agents.policies import POLICIES
from dus_gym.core.config import MAX_ENVS, MAX_TIMESTEPS, ConfigError, did_you_mean
from dus_gym.core.files import read_yaml

RUNNER_KEYS = ("n_envs", "n_timesteps", "normalize", "policy", "env_kwargs", "callback")
ZOO_CALLBACKS = ("dus_gym.agents.callbacks.DUSMetricsCallback",)
"""The ``callback`` an entry may name, for the RL Zoo (which imports it by its path); train_policy.py adds it
itself, so it is checked and not imported here."""
RUNNER_SET = ("env", "tensorboard_log", "seed", "device", "verbose", "_init_setup_model")
"""PPO arguments that train_policy sets itself (not valid in the file)."""


def ppo_keys() -> list[str]:
    """The keys an agents/ppo.yml entry may hold: PPO's constructor arguments and the runner keys."""
    import inspect

    from stable_baselines3 import PPO

    return [*RUNNER_KEYS, *(k for k in inspect.signature(PPO).parameters if k not in RUNNER_SET and k != "policy")]

FALLBACK_HYPERPARAMS: dict[str, Any] = {
    "n_envs": 2,
    "n_timesteps": 10_000,
    "policy": "MlpPolicy",
    "n_steps": 160,
    "batch_size": 64,
    "n_epochs": 10,
    "learning_rate": "lin_1e-3",
    "normalize": "dict(norm_obs=True, norm_reward=False)",
    "policy_kwargs": "dict(net_arch=dict(pi=[64, 64], vf=[64, 64]))",
}
"""The entry an env id without its own entry in the shipped agents/ppo.yml trains with (written as in the file)."""

ACTIVATIONS: dict[str, type[nn.Module]] = {
    f"{prefix}{name}": getattr(nn, name)
    for prefix in ("nn.", "th.nn.", "torch.nn.")
    for name in ("Tanh", "ReLU", "ELU", "LeakyReLU", "GELU", "SiLU")
}


@dataclass(frozen=True)
class AgentHyperparams:
    """Resolved hyper-parameters of one env: runner settings and PPO kwargs."""

    n_envs: int = 1
    n_timesteps: int = 10_000
    policy: str = "MlpPolicy"
    normalize: dict[str, Any] = field(default_factory=dict)
    """VecNormalize kwargs; empty when observations and rewards are not normalised."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the PPO constructor (schedules already turned into callables)."""
    raw: dict[str, Any] = field(default_factory=dict)
    """The entry as written in the file (saved next to the trained policy)."""

    @property
    def policy_class(self) -> str | type[BasePolicy]:
        """What PPO's constructor takes: dus-gym's policy class for a name it registers, else SB3's name."""
        return POLICIES.get(self.policy) if self.policy in POLICIES else self.policy


def parse_literal_call(text: str, where: str) -> Any:
    """Parse ``"dict(a=1, b=[2, 3], act=nn.Tanh)"`` safely: literals, dict() calls, known activations."""
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError as err:
        raise ConfigError(f"{where}: cannot parse {text!r} ({err.msg})") from err
    return _literal(tree, where, text)


def _literal(node: ast.AST, where: str, text: str) -> Any:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
        return {kw.arg: _literal(kw.value, where, text) for kw in node.keywords}
    if isinstance(node, ast.Dict):
        return {_literal(k, where, text): _literal(v, where, text) for k, v in zip(node.keys, node.values, strict=True)}
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_literal(e, where, text) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, (ast.Attribute, ast.Name)):
        name = ast.unparse(node)
        if name in ACTIVATIONS:
            return ACTIVATIONS[name]
        if name in ("True", "False", "None"):
            return {"True": True, "False": False, "None": None}[name]
        raise ConfigError(f"{where}: name '{name}' is not allowed in {text!r}; allowed: {sorted(ACTIVATIONS)[:6]}...")
    try:
        return ast.literal_eval(node)
    except ValueError as err:
        raise ConfigError(f"{where}: only literals and dict(...) are allowed, got {ast.unparse(node)!r}") from err


def schedule(value: Any, where: str) -> float | Callable[[float], float]:
    """``"lin_3e-4"`` -> SB3's ``LinearSchedule`` from 3e-4 to 0, as the RL Zoo reads it; numbers pass."""
    if isinstance(value, str):
        if not value.startswith("lin_"):
            raise ConfigError(f"{where}: schedule {value!r} must be a number or 'lin_<number>'")
        try:
            start = float(value[4:])
        except ValueError as err:
            raise ConfigError(f"{where}: schedule {value!r} must be a number or 'lin_<number>'") from err
        return LinearSchedule(start, 0.0, 1.0)  # SB3's: picklable, unlike a lambda
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a number or 'lin_<number>', got {value!r}")
    return float(value)


INF = float("inf")
PPO_BOUNDS: dict[str, tuple[type, float, float, bool]] = {
    # key: (int or float, low, high, low included); a schedule ("lin_<start>") is checked by its start
    "learning_rate": (float, 0.0, 1.0, False),
    "n_steps": (int, 1, 1_000_000, True),
    "batch_size": (int, 2, 10_000_000, True),
    "n_epochs": (int, 1, 10_000, True),
    "gamma": (float, 0.0, 1.0, True),
    "gae_lambda": (float, 0.0, 1.0, True),
    "clip_range": (float, 0.0, 10.0, False),
    "clip_range_vf": (float, 0.0, INF, False),
    "ent_coef": (float, 0.0, 1e3, True),
    "vf_coef": (float, 0.0, 1e3, True),
    "max_grad_norm": (float, 0.0, INF, False),
    "target_kl": (float, 0.0, INF, False),
    "sde_sample_freq": (int, -1, 1_000_000, True),
    "stats_window_size": (int, 1, 1_000_000, True),
}
"""The range of every numeric PPO hyper-parameter (finite, checked before a model is built): a learning
rate in (0, 1], gamma and gae_lambda in [0, 1], a clip range in (0, 10], coefficients in [0, 1000]; counts
are whole numbers (n_steps up to 1,000,000 per env, n_envs up to 1024, n_timesteps up to 10^9). None
keeps SB3's default where SB3 takes None (clip_range_vf, target_kl)."""


def check_ppo_value(key: str, value: Any, where: str) -> None:
    """Raise a ConfigError unless ``value`` (a number, or a schedule's start) is finite and in ``PPO_BOUNDS[key]``."""
    kind, low, high, closed = PPO_BOUNDS[key]
    start = value.start if isinstance(value, LinearSchedule) else value
    if kind is int:
        ok = isinstance(start, int) and not isinstance(start, bool)
        what = "a whole number"
    else:
        ok = isinstance(start, (int, float)) and not isinstance(start, bool) and math.isfinite(start)
        what = "a finite number"
    if ok:
        ok = (start >= low if closed else start > low) and start <= high
    if not ok:
        bound = f"{'[' if closed else '('}{low:g}, {high:g}]"
        got = f"the schedule start {start!r}" if isinstance(value, LinearSchedule) else repr(value)
        raise ConfigError(f"{where}.{key} must be {what} in {bound}, got {got}")


def load_hyperparams(path: str | Path, env_id: str, fallback: dict[str, Any] | None = None) -> AgentHyperparams:
    """Read the entry of ``env_id`` from an RL Zoo style YAML file.

    Args:
        path: the YAML file.
        env_id: the env id (the top-level key).
        fallback: the entry used when the file has neither ``env_id`` nor ``default``
            (:data:`FALLBACK_HYPERPARAMS` for the shipped file); None: such a file is an error.
    """
    path = Path(path)
    table = read_yaml(path)
    if env_id in table:
        entry = table[env_id]
    elif "default" in table:
        entry = table["default"]
    elif fallback is not None:
        entry = dict(fallback)
    else:
        raise ConfigError(f"{path} has no entry for '{env_id}' and no 'default'; add one (keys: {sorted(table)})")
    if not isinstance(entry, dict):
        raise ConfigError(f"{path}: the entry for '{env_id}' must be a mapping")
    return parse_entry(entry, f"{path}[{env_id}]")


def parse_entry(entry: dict[str, Any], where: str) -> AgentHyperparams:
    """One entry of an RL Zoo style file, as written, checked and parsed (``where`` names it in errors)."""
    valid = ppo_keys()
    for key in entry:
        if key not in valid:
            hint = did_you_mean(str(key), valid) or f" (valid keys: {valid})"
            raise ConfigError(f"unknown key '{key}' in {where}{hint}")
    callbacks = entry.get("callback") or []
    for name in [callbacks] if isinstance(callbacks, str) else callbacks:
        if name not in ZOO_CALLBACKS:
            raise ConfigError(f"{where}.callback: '{name}' is not a callback of dus-gym's; an entry may name "
                              f"{list(ZOO_CALLBACKS)} (for the RL Zoo, which imports it)")
    model_kwargs = {k: v for k, v in entry.items() if k not in RUNNER_KEYS}
    for key in ("learning_rate", "clip_range", "clip_range_vf"):
        if key in model_kwargs and model_kwargs[key] is not None:
            model_kwargs[key] = schedule(model_kwargs[key], f"{where}.{key}")
    for key in PPO_BOUNDS:
        if key in model_kwargs and not (model_kwargs[key] is None and key in ("clip_range_vf", "target_kl")):
            check_ppo_value(key, model_kwargs[key], where)
    if isinstance(model_kwargs.get("policy_kwargs"), str):
        model_kwargs["policy_kwargs"] = parse_literal_call(model_kwargs["policy_kwargs"], f"{where}.policy_kwargs")
    if isinstance(model_kwargs.get("policy_kwargs"), dict):
        model_kwargs["policy_kwargs"] = {
            k: ACTIVATIONS[v] if isinstance(v, str) and v in ACTIVATIONS else v
            for k, v in model_kwargs["policy_kwargs"].items()
        }
    normalize = entry.get("normalize", False)
    if isinstance(normalize, str):
        normalize = parse_literal_call(normalize, f"{where}.normalize")
    if normalize is True:
        normalize = {"norm_obs": True, "norm_reward": True}
    if normalize is False or normalize is None:
        normalize = {}
    if not isinstance(normalize, dict):
        raise ConfigError(f"{where}.normalize must be true/false or a mapping of VecNormalize kwargs")
    runner = {}
    for name, default, high in (("n_envs", 1, MAX_ENVS), ("n_timesteps", 10_000, MAX_TIMESTEPS)):
        value = entry.get(name, default)
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError as err:
                raise ConfigError(f"{where}.{name} must be a number, got {value!r}") from err
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not 1 <= value <= high or value != int(value):
            raise ConfigError(f"{where}.{name} must be a whole number from 1 to {high:_}, got {value!r}")
        runner[name] = int(value)
    env_kwargs = entry.get("env_kwargs") or {}
    if not isinstance(env_kwargs, dict):
        raise ConfigError(f"{where}.env_kwargs must be a mapping")
    return AgentHyperparams(
        n_envs=runner["n_envs"], n_timesteps=runner["n_timesteps"], policy=str(entry.get("policy", "MlpPolicy")),
        normalize=normalize, env_kwargs=env_kwargs, model_kwargs=model_kwargs, raw=entry,
    )
