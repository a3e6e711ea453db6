"""Train a sampling policy with SB3 PPO on a DUS env, save it, and evaluate it against the samplers.

The run folder holds ``policy.zip`` (SB3 model), ``vecnormalize.pkl`` (when normalising),
``policy.json`` (the env settings the policy acts under, and the SHA-256 digests of the two pickled
files, checked by the ppo sampler before it unpickles them), ``config.yml`` (the hyper-parameters as
written), ``args.yml``, ``command.txt``, ``checkpoints/``, ``eval/`` (EvalCallback),
``tb/`` (TensorBoard) and, after the evaluation, ``compare/``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import CallbackList, EvalCallback
from stable_baselines3.common.vec_env import VecNormalize

from dus_gym.agents.callbacks import AtomicCheckpointCallback, DUSMetricsCallback, HParamCallback, save_atomic
from dus_gym.agents.evaluation import make_eval_env
from dus_gym.agents.hyperparams import FALLBACK_HYPERPARAMS, AgentHyperparams, load_hyperparams
from dus_gym.core.config import MAX_TIMESTEPS, ConfigError, check_seeds, to_dict
from dus_gym.core.files import new_run_folder, sha256_of, write_text_atomic
from dus_gym.core.specs import sampler_settings, specs_dir
from dus_gym.envs.registration import env_run_config, registry_spec, run_mapping
from dus_gym.envs.vector.kinds import VEC_ENVS, build_vec_env, stop_vec_env
from dus_gym.experiments.compare import SamplerSpec, check_controls, run_comparison
from dus_gym.experiments.family import FamilyEvaluationConfig, run_family_evaluation
from dus_gym.experiments.resume import check_hyperparams_task, load_last_checkpoint, record_resume
from dus_gym.samplers.ppo import POLICY_FORMAT, POLICY_VERSION


@dataclass(frozen=True)
class TrainPolicyConfig:
    """A policy-training run (what ``train_policy.py`` parses)."""

    env_id: str = "dus_gym/SyntheticFamily-v1"
    """A registered DUS env id."""
    hyperparams: str | None = None
    """RL Zoo style YAML of PPO hyper-parameters (default: the shipped agents/ppo.yml)."""
    seed: int = 0
    """Seed of PPO and of the training envs (env i gets seed + i)."""
    n_timesteps: int | None = None
    """Overrides the file's n_timesteps (env steps, all envs together)."""
    vec_env: str = "auto"
    """"auto" (vectorized where the learners can be batched, else subproc), "dummy" (one process), "subproc"
    (one process per env, started with spawn, pinned to ``devices``), "vectorized" (one process, the envs'
    learners batched: dus_gym.envs.vector.batched) or "ray" (one Ray actor per env)."""
    devices: tuple[str, ...] | None = None
    """Learner devices, round robin over the envs (None: every visible GPU when the learner is on cuda/auto)."""
    ray: dict[str, Any] = field(default_factory=dict)
    """RayVecEnvConfig fields for vec_env "ray": address, num_cpus_per_env, num_gpus_per_env, init_kwargs."""
    run_dir: str = "runs"
    """Parent folder of the run folder."""
    resume: str | None = None
    """A run folder to continue from its last checkpoint."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Overrides of the env's kwargs (e.g. n_iterations, iterations_per_step)."""
    eval_freq: int = 2000
    """EvalCallback period in env steps (all envs together); 0 disables it."""
    n_eval_episodes: int = 2
    """Episodes per EvalCallback evaluation."""
    checkpoint_freq: int = 2000
    """Checkpoint period in env steps (all envs together)."""
    evaluate: bool = True
    """After training, compare the saved policy with uniform and heuristic on held-out seeds."""
    eval_seeds: tuple[int, ...] = (100, 101, 102, 103, 104)
    """Held-out learner seeds of that comparison (never drawn by training episodes in practice)."""
    controls: bool = True
    """Add the policy's own controls: constant at its mean counts, open-loop replay."""
    eval_instances: int = 10
    """A family env: the evaluation runs on this many held-out instances x the first two eval seeds
    (uniform, the heuristic with alpha tuned on training instances, ppo and ppo-replay; docs/protocol.md)."""
    grid: bool = False
    """Add the best constant counts of a small grid (6 more rows; slower)."""
    progress: bool = True
    """Show progress bars."""
    allow_task_import: bool = False
    """Let the hyper-parameter file (or a resumed run's args.yml) name a ``module:function`` task."""

    def __post_init__(self) -> None:
        check_seeds(self.eval_seeds, "eval_seeds")
        if self.vec_env not in VEC_ENVS:
            raise ConfigError(f"vec_env must be one of {VEC_ENVS.names()}, got '{self.vec_env}'")
        if self.n_timesteps is not None and not 1 <= self.n_timesteps <= MAX_TIMESTEPS:
            raise ConfigError(f"n_timesteps must be >= 1 and <= {MAX_TIMESTEPS:_}, got {self.n_timesteps}")
        if self.eval_instances < 1:
            raise ConfigError(f"eval_instances must be >= 1, got {self.eval_instances}")
        if self.eval_freq < 0 or self.checkpoint_freq < 1:
            raise ConfigError(f"eval_freq must be >= 0 and checkpoint_freq >= 1, got {self.eval_freq} and "
                              f"{self.checkpoint_freq}")
        if self.evaluate:
            check_controls(["ppo"], list(self.eval_seeds), self.controls)


def train_policy(config: TrainPolicyConfig, argv: list[str] | None = None) -> Path:
    """Train, save and (optionally) evaluate a policy; return the run folder."""
    hp_path = Path(config.hyperparams) if config.hyperparams else specs_dir("agents") / "ppo.yml"
    hp: AgentHyperparams = load_hyperparams(hp_path, config.env_id,
                                            fallback=None if config.hyperparams else FALLBACK_HYPERPARAMS)
    check_hyperparams_task(hp.env_kwargs, hp_path, config.allow_task_import, task="task" not in config.env_kwargs)
    env_kwargs = {**hp.env_kwargs, **config.env_kwargs}
    n_timesteps = config.n_timesteps or hp.n_timesteps
    if config.resume:
        folder = Path(config.resume)
        if not folder.is_dir():
            raise FileNotFoundError(f"run folder to resume not found: {folder}")
        env_run_config(config.env_id, env_kwargs, folder)  # fail early on a bad id or kwargs
    else:
        env_run_config(config.env_id, env_kwargs, config.run_dir)  # fail early, before a folder is made
        folder = new_run_folder(config.run_dir, f"ppo-{config.env_id.split('/')[-1]}-seed{config.seed}")
    command = list(argv if argv is not None else sys.argv)
    if config.resume:  # the provenance files stay as the run wrote them
        record_resume(folder, command)
    else:
        write_text_atomic(folder / "config.yml", yaml.safe_dump({config.env_id: hp.raw}, sort_keys=False))
        write_text_atomic(folder / "args.yml", yaml.safe_dump(to_dict(config), sort_keys=False))
        write_text_atomic(folder / "command.txt", " ".join(command) + "\n")

    venv = build_vec_env(config.env_id, hp.n_envs, config.seed, env_kwargs, config.vec_env, config.devices,
                         config.ray)
    eval_venv = None
    try:
        if config.resume:
            # trusted input: an SB3 zip is unpickled (the run folder is this user's own)
            model, venv, model_path = load_last_checkpoint(folder, venv, bool(hp.normalize), device="cpu",
                                                           tensorboard_log=str(folder / "tb"))
        elif hp.normalize:
            venv = VecNormalize(venv, **hp.normalize)
        eval_venv = make_eval_env(config.env_id, config.seed, env_kwargs, venv)
        if config.resume:
            model._last_obs = None  # the envs are fresh: learn() resets them instead of using a stale observation
            model.set_random_seed(config.seed + model.num_timesteps)  # a resumed run is reproducible too
            print(f"resuming from {model_path} at {model.num_timesteps} steps")
        else:
            model = PPO(hp.policy_class, venv, seed=config.seed, device="cpu", tensorboard_log=str(folder / "tb"),
                        verbose=0, **hp.model_kwargs)
        hparams = {"env_id": config.env_id, "seed": config.seed, "n_timesteps": n_timesteps,
                   **{f"ppo/{key}": value for key, value in hp.raw.items() if key != "env_kwargs"},
                   **{f"env/{key}": value for key, value in env_kwargs.items()}}
        callbacks = [DUSMetricsCallback(), HParamCallback(hparams),
                     AtomicCheckpointCallback(max(1, config.checkpoint_freq // hp.n_envs), str(folder / "checkpoints"),
                                              name_prefix="ppo", save_vecnormalize=bool(hp.normalize))]
        if config.eval_freq > 0:
            callbacks.append(EvalCallback(eval_venv, n_eval_episodes=config.n_eval_episodes,
                                          eval_freq=max(1, config.eval_freq // hp.n_envs),
                                          log_path=str(folder / "eval"), best_model_save_path=str(folder / "eval"),
                                          deterministic=True, verbose=0))
        remaining = max(0, n_timesteps - model.num_timesteps)
        model.learn(remaining, callback=CallbackList(callbacks), progress_bar=config.progress,
                    reset_num_timesteps=not config.resume, tb_log_name="ppo")
        if hp.normalize:
            save_atomic(venv, folder / "vecnormalize.pkl")
        save_atomic(model, folder / "policy.zip")
        settings = venv.get_attr("settings", indices=[0])[0]
        pickled = ["vecnormalize.pkl", "policy.zip"] if hp.normalize else ["policy.zip"]
        description = {"format": POLICY_FORMAT, "version": POLICY_VERSION, "env_id": config.env_id,
                       "timesteps": int(model.num_timesteps), **settings,
                       "digests": {name: sha256_of(folder / name) for name in pickled}}
        write_text_atomic(folder / "policy.json", json.dumps(description, indent=2))
    except KeyboardInterrupt:
        stop_vec_env(venv)  # a worker may be mid-reply: stop it rather than wait for it
        raise
    finally:
        venv.close()
        if eval_venv is not None:
            eval_venv.close()
    print(f"policy saved: {folder / 'policy.zip'} ({model.num_timesteps} env steps)")
    if config.evaluate:
        evaluate_policy(config, folder, env_kwargs)
    return folder


def evaluate_policy(config: TrainPolicyConfig, folder: Path, env_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Compare the saved policy with uniform and the heuristic (and controls) on held-out seeds (and instances)."""
    base = env_run_config(config.env_id, env_kwargs, folder)
    if base.family is not None:
        evaluation = FamilyEvaluationConfig(
            spec=str(registry_spec(config.env_id)), n_instances=config.eval_instances, seeds=config.eval_seeds[:2],
            policies=(str(folder),), commit_steps=(1,), alpha_grid=(10.0, 30.0, 60.0), sources=("train",),
            tune_instances=8, tune_seeds=(0,), reversed_heuristic=False, oracle=False, ogm_ge=False,
            out_dir=str(folder / "family"), overrides=run_mapping(env_kwargs, config.env_id))
        record = run_family_evaluation(evaluation, progress=config.progress)
        print(f"{config.env_id}: {len(record['pool'])} held-out instances x seeds {list(evaluation.seeds)}:")
        print(record["table"])
        return record
    specs = [SamplerSpec("uniform", "uniform", {}),
             SamplerSpec("heuristic", "heuristic", sampler_settings("heuristic", base.task)),
             SamplerSpec("ppo", "ppo", {"policy": str(folder)})]
    record = run_comparison(base, specs, list(config.eval_seeds), folder / "compare", alone=False,
                            controls=config.controls, grid=config.grid, progress=config.progress)
    print(f"{config.env_id}: held-out seeds {list(config.eval_seeds)}, test accuracy in %:")
    print(record["table"])
    return record
