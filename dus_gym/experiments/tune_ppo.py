"""PPO's hyper-parameters tuned on a DUS env with Optuna, at budgets these envs can pay (``dus-gym tune ppo``).

Every env step of a DUS env trains a learner for K iterations (about 10-25 env steps/s on a CPU),
so the RL Zoo's search (``n_steps`` up to 4,096 over 500 trials) does not fit. Here a trial trains
PPO for ``trial_timesteps`` env steps (default 2,560: 64 episodes of 40 steps), and the rollout
size is a whole number of episodes (1, 2 or 4 per env); the other choices are PPO's usual ones,
in ranges near agents/ppo.yml. After every rollout the trial reports the mean final validation
accuracy of the episodes finished in it (pruned by the median rule); its value is the mean final
validation accuracy of ``n_eval_episodes`` deterministic episodes of the trained policy on learner
seeds away from the training ones. The best settings go to ``<study>/ppo.yml`` (the entry of the
env id, in agents/ppo.yml's format, on top of the entry it was tuned from), ready for
``train_policy.py -conf``. Study folder and resuming: :mod:`dus_gym.experiments.tune`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecNormalize

from dus_gym.agents.evaluation import final_val_accuracy, make_eval_env
from dus_gym.agents.hyperparams import FALLBACK_HYPERPARAMS, load_hyperparams, parse_entry
from dus_gym.core.config import MAX_TIMESTEPS, MAX_TRIALS, ConfigError, check_seeds
from dus_gym.core.files import write_text_atomic
from dus_gym.core.specs import specs_dir
from dus_gym.envs.registration import env_run_config
from dus_gym.envs.vector.kinds import VEC_ENVS, build_vec_env
from dus_gym.experiments.tune import (
    best_trial,
    finished_trials,
    import_optuna,
    open_study,
    round_significant,
    run_study,
)

if TYPE_CHECKING:
    import optuna



@dataclass(frozen=True)
class PPOTuneConfig:
    """A search over PPO's hyper-parameters on one DUS env (``dus-gym tune ppo``)."""

    env_id: str = "dus_gym/Synthetic-v0"
    folder: str = "runs/tune-Synthetic-v0-ppo"
    """The study folder (study.db, ppo.yml, best.json)."""
    hyperparams: str | None = None
    """The RL Zoo style YAML whose entry is the starting point (default: the shipped agents/ppo.yml)."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Overrides of the env's kwargs (e.g. a smaller n_iterations for a quick search)."""
    n_trials: int = 12
    """Finished trials (complete or pruned) the study should hold."""
    timeout: float | None = None
    """Seconds of this call's search (None: no limit); the study resumes later."""
    trial_timesteps: int = 2560
    """Env steps of PPO training per trial (all envs together)."""
    n_eval_episodes: int = 2
    """Deterministic episodes that score a trained trial."""
    seed: int = 0
    """Seed of PPO and of the training envs in every trial (common random numbers across trials)."""
    sampler_seed: int = 0
    """Seed of Optuna's sampler."""
    n_startup_trials: int = 4
    """Random trials before TPE, and trials before pruning starts."""
    vec_env: str = "dummy"
    """Where the trial's envs run (:data:`dus_gym.envs.vector.kinds.VEC_ENVS`)."""
    progress: bool = True

    def __post_init__(self) -> None:
        check_seeds([self.seed], "seed")
        if not (1 <= self.n_trials <= MAX_TRIALS and 1 <= self.trial_timesteps <= MAX_TIMESTEPS
                and 1 <= self.n_eval_episodes <= 10_000):
            raise ConfigError(f"trials (up to {MAX_TRIALS:_}), trial_timesteps (up to {MAX_TIMESTEPS:_}) and eval "
                              f"episodes (up to 10_000) must be >= 1, got {self.n_trials}, {self.trial_timesteps} "
                              f"and {self.n_eval_episodes}")
        if self.timeout is not None and not (math.isfinite(self.timeout) and self.timeout > 0):
            raise ConfigError(f"timeout must be a finite number of seconds > 0, got {self.timeout}")
        if self.vec_env not in VEC_ENVS or self.vec_env == "ray":
            raise ConfigError(f"vec_env must be one of dummy, subproc, vectorized, got '{self.vec_env}'")


def ppo_space(trial: optuna.Trial, episode_steps: int, n_envs: int) -> dict[str, Any]:
    """One trial's PPO settings, in agents/ppo.yml's form (``lin_`` learning rate, ``dict(...)`` policy kwargs).

    Args:
        trial: the trial.
        episode_steps: env steps of one episode (n_iterations / K, rounded up).
        n_envs: envs per rollout.
    """
    n_steps = episode_steps * trial.suggest_categorical("episodes_per_rollout", [1, 2, 4])
    minibatches = trial.suggest_categorical("minibatches", [1, 2, 4, 8])
    width = trial.suggest_categorical("net_width", [32, 64, 128])
    log_std = trial.suggest_float("log_std_init", -1.5, 0.0)
    return {
        "n_steps": n_steps,
        "batch_size": max(2, n_steps * n_envs // minibatches),
        "n_epochs": trial.suggest_categorical("n_epochs", [5, 10, 20]),
        "learning_rate": f"lin_{round_significant(trial.suggest_float('learning_rate', 1e-4, 3e-3, log=True))}",
        "gamma": trial.suggest_categorical("gamma", [0.9, 0.95, 0.99, 1.0]),
        "gae_lambda": trial.suggest_categorical("gae_lambda", [0.9, 0.95, 0.98, 1.0]),
        "clip_range": trial.suggest_categorical("clip_range", [0.1, 0.2, 0.3]),
        "ent_coef": round_significant(trial.suggest_float("ent_coef", 1e-6, 1e-2, log=True)),
        "policy_kwargs": f"dict(net_arch=dict(pi=[{width}, {width}], vf=[{width}, {width}]), "
                         f"log_std_init={round_significant(log_std)})",
    }


class PruneOnEpisodes(BaseCallback):
    """After every rollout, reports the mean final validation accuracy of the episodes it finished; prunes."""

    def __init__(self, trial: optuna.Trial) -> None:
        super().__init__()
        self.trial = trial
        self.finished: list[float] = []
        self.pruned = False

    def _on_step(self) -> bool:
        for info, done in zip(self.locals["infos"], self.locals["dones"], strict=True):
            if done and "val_acc" in info and math.isfinite(info["val_acc"]):
                self.finished.append(float(info["val_acc"]))
        return not self.pruned

    def _on_rollout_end(self) -> None:
        if self.finished:
            self.trial.report(float(np.mean(self.finished)), self.num_timesteps)
            self.finished = []
            self.pruned = self.trial.should_prune()


def tune_ppo(config: PPOTuneConfig) -> dict[str, Any]:
    """Search PPO's hyper-parameters on ``config.env_id``; write the best entry; return the record (best.json)."""
    optuna = import_optuna()
    path = Path(config.hyperparams) if config.hyperparams else specs_dir("agents") / "ppo.yml"
    base = load_hyperparams(path, config.env_id, fallback=None if config.hyperparams else FALLBACK_HYPERPARAMS)
    env_kwargs = {**base.env_kwargs, **config.env_kwargs}
    run_config = env_run_config(config.env_id, env_kwargs, config.folder)  # fails early on a bad id or kwargs
    n_iterations = run_config.n_iterations or 0
    if not n_iterations:
        raise ConfigError(f"{config.env_id}: dus-gym tune ppo needs the env's budget in iterations (n_iterations)")
    episode_steps = math.ceil(n_iterations / run_config.env.iterations_per_step)
    settings = {"env_id": config.env_id, "env_kwargs": env_kwargs, "start": base.raw, "seed": config.seed,
                "trial_timesteps": config.trial_timesteps, "n_eval_episodes": config.n_eval_episodes}
    study = open_study(config.folder, f"{config.env_id.replace('/', '-')}-ppo", config.sampler_seed,
                       config.n_startup_trials, n_warmup_steps=config.trial_timesteps // 2, settings=settings)

    def objective(trial: optuna.Trial) -> float:
        entry = {**base.raw, **ppo_space(trial, episode_steps, base.n_envs)}
        if env_kwargs:  # the entry carries the env settings it was tuned under, so that it is applied to that env
            entry["env_kwargs"] = env_kwargs
        trial.set_user_attr("entry", entry)
        hp = parse_entry(entry, f"trial {trial.number} of {study.study_name}")
        venv = build_vec_env(config.env_id, hp.n_envs, config.seed, env_kwargs, config.vec_env)
        eval_venv = None
        try:
            if hp.normalize:
                venv = VecNormalize(venv, **hp.normalize)
            model = PPO(hp.policy_class, venv, seed=config.seed, device="cpu", verbose=0, **hp.model_kwargs)
            callback = PruneOnEpisodes(trial)
            model.learn(config.trial_timesteps, callback=callback)
            if callback.pruned:
                raise optuna.TrialPruned(f"pruned at {model.num_timesteps} env steps")
            eval_venv = make_eval_env(config.env_id, config.seed, env_kwargs, venv)
            scores = final_val_accuracy(model, eval_venv, config.n_eval_episodes)
        finally:
            venv.close()
            if eval_venv is not None:
                eval_venv.close()
        trial.set_user_attr("eval_val_acc", scores)
        return float(np.mean(scores))

    run_study(study, objective, config.n_trials, config.timeout, progress=config.progress)
    best = best_trial(study)
    entry = best.user_attrs["entry"]
    folder = Path(config.folder)
    write_text_atomic(folder / "ppo.yml", yaml.safe_dump({config.env_id: entry}, sort_keys=False))
    record = {"env_id": config.env_id, "study": study.study_name, "best_trial": best.number,
              "best_val_acc": best.value, "trials_finished": finished_trials(study),
              "trial_timesteps": config.trial_timesteps, "entry": entry, "tuned_from": str(path)}
    write_text_atomic(folder / "best.json", json.dumps(record, indent=2))
    return record
