"""``dus-gym train-policy`` and ``train_policy.py``: train a sampling policy with PPO, or resume one."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dus_gym.cli.common import add_allow_task_import
from dus_gym.core.config import from_dict, to_dict
from dus_gym.core.specs import parse_overrides
from dus_gym.envs.vector.kinds import VEC_ENVS
from dus_gym.experiments.resume import resumed_settings
from dus_gym.experiments.train_policy import TrainPolicyConfig, train_policy


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``train_policy.py`` / ``dus-gym train-policy`` (defaults: :class:`TrainPolicyConfig`'s)."""
    c = TrainPolicyConfig
    parser.add_argument("--env", default=c.env_id, help=f"registered env id (default {c.env_id})")
    parser.add_argument("-conf", "--conf-file", dest="hyperparams", help="RL Zoo style YAML (default agents/ppo.yml)")
    parser.add_argument("--seed", type=int, default=c.seed)
    parser.add_argument("-n", "--n-timesteps", type=int,
                        help="env steps (overrides the YAML; PPO rounds up to whole rollouts of n_envs x n_steps)")
    parser.add_argument("--vec-env", choices=VEC_ENVS.names(), default=c.vec_env,
                        help="dummy: one process; subproc: one process per env; vectorized: the envs' learners "
                             "batched in one process; ray: one Ray actor per env; auto: vectorized where the "
                             f"learners can be batched, else subproc (default {c.vec_env})")
    parser.add_argument("--devices", nargs="+", help="learner devices, round robin over the envs (default: every "
                                                     "visible GPU when the learner is on cuda/auto)")
    parser.add_argument("--ray-address", help="Ray cluster for --vec-env ray (auto, ray://head:10001; default local)")
    parser.add_argument("--ray-cpus-per-env", type=float, default=1.0)
    parser.add_argument("--ray-gpus-per-env", type=float, default=0.0)
    parser.add_argument("--run-dir", default=c.run_dir)
    parser.add_argument("--resume", help="run folder to continue from its last checkpoint, with the run's own "
                                         "settings (args.yml, config.yml); flags that would change them are refused")
    parser.add_argument("--env-kwargs", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                        help="env kwargs overrides, e.g. n_iterations=400 iterations_per_step=10")
    parser.add_argument("--eval-freq", type=int, default=c.eval_freq, help="EvalCallback period in env steps (0: off)")
    parser.add_argument("--checkpoint-freq", type=int, default=c.checkpoint_freq)
    parser.add_argument("--eval-seeds", type=int, nargs="+", default=list(c.eval_seeds))
    parser.add_argument("--no-evaluate", action="store_true", help="skip the comparison after training")
    parser.add_argument("--no-controls", action="store_true", help="skip the policy's constant and replay controls")
    parser.add_argument("--grid", action="store_true", help="add the best constant counts of a small grid")
    parser.add_argument("--no-progress", action="store_true")
    add_allow_task_import(parser)


def given_flags(add_arguments: Any, argv: Sequence[str]) -> dict[str, Any]:
    """The options typed in ``argv`` (destination -> value), defaults left out: what the user asked for."""
    parser = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    add_arguments(parser)
    for action in parser._actions:  # defaults given per argument: drop them, so that only typed options remain
        action.default = argparse.SUPPRESS
    return vars(parser.parse_args(list(argv)))


_TRAIN_FIELDS = {"env": "env_id", "no_evaluate": "evaluate", "no_controls": "controls", "no_progress": "progress",
                 "ray_address": "ray", "ray_cpus_per_env": "ray", "ray_gpus_per_env": "ray"}
"""train-policy flags whose TrainPolicyConfig field has another name (the ray ones fill the ``ray`` mapping)."""



def main(args: argparse.Namespace) -> int:
    """``dus-gym train-policy`` and ``train_policy.py``."""
    env_kwargs = parse_overrides(args.env_kwargs)
    config = TrainPolicyConfig(
        env_id=args.env, hyperparams=args.hyperparams, seed=args.seed, n_timesteps=args.n_timesteps,
        vec_env=args.vec_env, devices=tuple(args.devices) if args.devices else None,
        ray={"address": args.ray_address, "num_cpus_per_env": args.ray_cpus_per_env,
             "num_gpus_per_env": args.ray_gpus_per_env},
        run_dir=args.run_dir, resume=args.resume, env_kwargs=env_kwargs,
        eval_freq=args.eval_freq, checkpoint_freq=args.checkpoint_freq, eval_seeds=tuple(args.eval_seeds),
        evaluate=not args.no_evaluate, controls=not args.no_controls, grid=args.grid, progress=not args.no_progress,
        allow_task_import=args.allow_task_import,
    )
    argv = list(args.argv or [])
    if argv[:1] == ["train-policy"]:
        argv = argv[1:]
    if args.resume:  # the run's own settings; what was typed may only change where and how long it runs
        typed = {_TRAIN_FIELDS.get(dest, dest) for dest in given_flags(add_arguments, argv)}
        values = {k: v for k, v in to_dict(config).items() if k in typed}
        config = from_dict(TrainPolicyConfig, resumed_settings(Path(args.resume), values))
    prefix = [] if Path(sys.argv[0]).name == "train_policy.py" else ["train-policy"]
    train_policy(config, argv=[sys.argv[0], *prefix, *argv])  # command.txt records what was typed
    return 0
