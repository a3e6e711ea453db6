"""Resuming a run folder with its own settings: a training run (``dus-gym run``) or a policy-training run.

**A training run** (``dus-gym run --resume RUN``) continues from ``checkpoint.pt`` with the run's
``config.yaml``; only the learner's device may change, and the learning rate with ``--lr`` (after a
divergence), recorded in ``changes.yaml``, which every later resume applies
(:func:`resumed_run_config`). A finished run (``results.json``) is not resumed (:func:`check_resumable`).

**A policy-training run**: ``train_policy.py`` writes its provenance once, when the run starts: ``args.yml`` (the
:class:`~dus_gym.experiments.train_policy.TrainPolicyConfig`), ``config.yml`` (the PPO hyper-parameters as
written) and ``command.txt``. ``--resume RUN`` continues with exactly those settings: a flag that
would change what is trained (env, env kwargs such as the step size K, hyper-parameters, seed,
checkpoint and evaluation periods) is refused when it differs from the run's; only where the
learners run, how long training goes on and the final evaluation may change (:data:`RESUME_MAY_CHANGE`).
Provenance files are never rewritten; every resume appends its command line to ``resumes.txt``.

A resume starts from the newest ``checkpoints/ppo_<n>_steps.zip`` whose VecNormalize statistics
(``ppo_vecnormalize_<n>_steps.pkl``) and model both load; an unreadable pair is reported and the
previous one is used, so a file damaged by a crash costs one checkpoint period, not the run.
"""

from __future__ import annotations

import json
import re
import time
import warnings
from pathlib import Path
from typing import Any

import yaml
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from dus_gym.core.config import MAX_SHOWN, ConfigError, RunConfig, from_dict, shown
from dus_gym.core.files import read_yaml, write_text_atomic
from dus_gym.core.specs import deep_merge
from dus_gym.tasks import OPT_IN, check_spec_sources

CHANGES_FILE = "changes.yaml"
"""Changes made on resuming a training run (``--lr``), appended in order; config.yaml stays as the run wrote it."""

ARGS_FILE = "args.yml"
HYPERPARAMS_FILE = "config.yml"
RESUMES_FILE = "resumes.txt"
RESUME_MAY_CHANGE = ("resume", "n_timesteps", "vec_env", "devices", "ray", "evaluate", "eval_seeds", "controls",
                     "grid", "progress", "allow_task_import")
"""TrainPolicyConfig fields a resume may change: where the learners run, the total steps, the final evaluation."""


def check_resumable(run_dir: str | Path) -> None:
    """Raise a ValueError when the training run in ``run_dir`` has already finished (nothing to resume)."""
    if (Path(run_dir) / "results.json").is_file():
        raise ValueError(f"the run in {run_dir} has already finished (results.json exists); nothing to resume")


def resumed_run_config(folder: Path, lr: float | None = None, device: str | None = None,
                       allow_task_import: bool = False) -> tuple[RunConfig, bool]:
    """The config of the training run in ``folder``, and whether its learning rate was changed.

    Args:
        folder: the run folder (with config.yaml, not finished).
        lr: a new learning rate, appended to ``changes.yaml`` (applied by this and every later resume).
        device: the learner's device for this resume.
        allow_task_import: the run's config may name a ``module:function`` task.
    """
    if not (folder / "config.yaml").is_file():
        raise FileNotFoundError(f"no run to resume in {folder}: expected a run folder with config.yaml")
    check_resumable(folder)
    data = read_yaml(folder / "config.yaml")
    check_spec_sources(data, f"the run folder's {folder / 'config.yaml'}", allow_task_import)
    changes_path = folder / CHANGES_FILE
    changes = read_yaml(changes_path).get("changes", []) if changes_path.is_file() else []
    if not isinstance(changes, list) or not all(isinstance(c, dict) and "learner.lr" in c for c in changes):
        raise ConfigError(f"{changes_path} is malformed: expected 'changes:' with entries holding learner.lr")
    if lr is not None:
        changes.append({"learner.lr": lr, "at": time.strftime("%Y-%m-%d %H:%M:%S")})
    for change in changes:
        data = deep_merge(data, {"learner": {"lr": change["learner.lr"]}})
    if device is not None:
        data = deep_merge(data, {"learner": {"device": device}})
    config = from_dict(RunConfig, data)
    if lr is not None:
        write_text_atomic(changes_path, yaml.safe_dump({"changes": changes}, sort_keys=False))
    return config, bool(changes)


def resumed_settings(folder: Path, typed: dict[str, Any]) -> dict[str, Any]:
    """The TrainPolicyConfig mapping of the run in ``folder``, with the flags the user typed checked against it.

    Args:
        folder: the run folder (with args.yml and config.yml).
        typed: TrainPolicyConfig fields the user typed on the command line, with their values.

    Raises:
        FileNotFoundError: ``folder`` is not a policy-training run folder.
        ConfigError: a typed flag would change the run's settings; or the run's env kwargs name a
            ``module:function`` task and ``--allow-task-import`` was not given.
    """
    folder = Path(folder)
    if not (folder / ARGS_FILE).is_file() or not (folder / HYPERPARAMS_FILE).is_file():
        raise FileNotFoundError(f"no policy-training run to resume in {folder}: expected {ARGS_FILE} and "
                                f"{HYPERPARAMS_FILE} (written by train_policy.py when the run started)")
    saved = read_yaml(folder / ARGS_FILE)
    differ = [f"{key} {shown(value)} (the run has {shown(saved.get(key))})" for key, value in typed.items()
              if key not in RESUME_MAY_CHANGE and _plain(value) != _plain(saved.get(key))]
    if differ:
        raise ConfigError(f"--resume continues {folder} with its own settings ({ARGS_FILE}); drop the flags that "
                          f"differ: {'; '.join(differ)}. Only {', '.join(RESUME_MAY_CHANGE[1:])} may change")
    settings = {**saved, **{k: v for k, v in typed.items() if k in RESUME_MAY_CHANGE}, "resume": str(folder)}
    settings["allow_task_import"] = bool(typed.get("allow_task_import", False))  # a file cannot grant itself trust
    env_kwargs = saved.get("env_kwargs") or {}
    if isinstance(env_kwargs, dict):
        check_spec_sources(env_kwargs, f"the run folder's {folder / ARGS_FILE}",
                          bool(settings.get("allow_task_import")))
    settings["hyperparams"] = str(folder / HYPERPARAMS_FILE)  # the hyper-parameters as the run wrote them
    return settings


def record_resume(folder: Path, argv: list[str]) -> None:
    """Append the resuming command line to ``resumes.txt`` (the run's provenance files stay as written)."""
    path = Path(folder) / RESUMES_FILE
    before = path.read_text() if path.is_file() else ""
    write_text_atomic(path, before + f"{time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n")


def checkpoint_pairs(folder: Path) -> list[tuple[Path, Path]]:
    """``(ppo_<n>_steps.zip, ppo_vecnormalize_<n>_steps.pkl)`` of ``folder/checkpoints``, newest first."""
    zips = [(int(m.group(1)), p) for p in (Path(folder) / "checkpoints").glob("ppo_*_steps.zip")
            if (m := re.fullmatch(r"ppo_(\d+)_steps\.zip", p.name))]
    return [(p, p.with_name(f"ppo_vecnormalize_{n}_steps.pkl")) for n, p in sorted(zips, reverse=True)]


def load_last_checkpoint(folder: Path, venv: VecEnv, normalize: bool, **ppo_kwargs: Any) -> tuple[PPO, VecEnv, Path]:
    """The newest checkpoint of ``folder`` that loads: the model, the (normalised) vec env and the zip's path.

    Args:
        folder: the run folder.
        venv: the training envs (wrapped in the saved VecNormalize statistics when ``normalize``).
        normalize: the run normalises observations or rewards (its checkpoints carry statistics).
        **ppo_kwargs: passed to ``PPO.load`` (device, tensorboard_log).

    Raises:
        FileNotFoundError: no checkpoint in the folder.
        ValueError: no checkpoint pair loads (each one's error is named).
    """
    pairs = checkpoint_pairs(folder)
    if not pairs:
        raise FileNotFoundError(f"nothing to resume in {folder}: no checkpoints/ppo_<n>_steps.zip")
    failures = []
    for model_path, stats_path in pairs:
        try:
            env = venv
            if normalize:
                if not stats_path.is_file():
                    raise FileNotFoundError(f"{stats_path.name} is missing")
                env = VecNormalize.load(str(stats_path), venv)  # trusted input: the run folder is the user's own
            model = PPO.load(model_path, env=env, **ppo_kwargs)
        except Exception as err:  # unpickling a damaged file raises many types
            failures.append(f"{model_path.name}: {type(err).__name__}: {str(err)[:MAX_SHOWN]}")
            warnings.warn(f"checkpoint {model_path} could not be loaded ({failures[-1]}); trying the previous one",
                          stacklevel=2)
            continue
        return model, env, model_path
    raise ValueError(f"no checkpoint of {folder} can be loaded ({'; '.join(failures)}); start a new run")


def check_hyperparams_task(env_kwargs: dict[str, Any], path: Path, allow_task_import: bool, task: bool = True) -> None:
    """Refuse a ``module:function`` task or family generator in a hyper-parameter file's ``env_kwargs`` unless allowed.

    ``task=False``: the task is given elsewhere (``--env-kwargs task=...``), so only the generator is checked.
    """
    check_spec_sources(env_kwargs, f"the hyper-parameter file {path} (env_kwargs)", allow_task_import, task=task)


def _plain(value: Any) -> Any:
    """Tuples as lists, as YAML reads them back (for comparing typed flags with args.yml)."""
    return json.loads(json.dumps(value, default=str))


__all__ = ["CHANGES_FILE", "OPT_IN", "RESUME_MAY_CHANGE", "check_hyperparams_task", "check_resumable",
           "checkpoint_pairs", "load_last_checkpoint", "record_resume", "resumed_run_config", "resumed_settings"]
