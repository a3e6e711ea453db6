"""``dus-gym run``: train a task with one sampler and one seed, or resume such a run."""

from __future__ import annotations

import argparse
from pathlib import Path

from dus_gym.cli.common import add_common_arguments, add_preset_argument, names, resolve_config
from dus_gym.core.config import ConfigError, LearnerConfig, RunConfig, from_dict
from dus_gym.core.files import new_run_folder, remove_if_empty
from dus_gym.core.specs import deep_merge
from dus_gym.experiments.resume import CHANGES_FILE, resumed_run_config
from dus_gym.experiments.run import CHECKPOINT_NAME, run_training
from dus_gym.samplers import SAMPLERS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of this command."""
    add_common_arguments(parser)
    add_preset_argument(parser)
    parser.add_argument("--sampler", help=f"sampler: {names(SAMPLERS)} (default {RunConfig.sampler})")
    parser.add_argument("--policy", help="saved policy folder (train_policy.py), for --sampler ppo; trusted input only "
                        "(its policy.zip is unpickled)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--resume", metavar="RUN_FOLDER",
                        help="continue an interrupted run from its checkpoint.pt, with its own config.yaml")
    parser.add_argument("--lr", type=float, help="with --resume: continue from the last good checkpoint with this "
                                                 f"learning rate (after a divergence; recorded in RUN/{CHANGES_FILE})")


RESUME_CONFLICTS = ("config", "task", "iterations", "epochs", "set", "sampler", "policy", "seed", "method", "run_dir",
                    "preset")
"""Flags that would change a run, so they cannot go with ``--resume`` (which uses the run's config.yaml)."""



def resume_config(args: argparse.Namespace) -> tuple[RunConfig, Path, bool]:
    """The config of the run folder ``args.resume``, the folder, and whether its learning rate was changed.

    Only ``--device`` may change, and the learning rate with ``--lr`` (recorded in ``changes.yaml``,
    which every later resume applies: config.yaml stays as the run wrote it).
    """
    given = [f"--{name.replace('_', '-')}" for name in RESUME_CONFLICTS if getattr(args, name, None)]
    if given:
        raise ConfigError(f"--resume continues a run with its own config.yaml; drop {', '.join(given)}")
    folder = Path(args.resume)
    config, new_lr = resumed_run_config(folder, args.lr, args.device, args.allow_task_import)
    return config, folder, new_lr


def new_run_config(args: argparse.Namespace) -> RunConfig:
    """The config of a new run: specs, config file, ``--preset``, flags and ``--set`` overrides (no training)."""
    data = resolve_config(args)
    if args.policy:
        data = deep_merge(data, {"sampler_kwargs": {"policy": args.policy}})
    return from_dict(RunConfig, data)


def main(args: argparse.Namespace) -> int:
    """``dus-gym run``."""
    if args.lr is not None and not args.resume:
        raise ConfigError("--lr changes the learning rate of a resumed run; a new run takes --set learner.lr=LR")
    new_lr = False
    if args.resume:
        config, folder, new_lr = resume_config(args)
        checkpoint = folder / CHECKPOINT_NAME
        print(f"resuming {folder} from {checkpoint}" if checkpoint.is_file()
              else f"no checkpoint yet in {folder}: starting the run again", flush=True)
    else:
        config = new_run_config(args)
        method = "" if config.learner.method == LearnerConfig.method else f"{config.learner.method}-"
        preset = f"{args.preset}-" if args.preset not in (None, "common") else ""
        folder = new_run_folder(config.run_dir,
                                f"{config.task.split(':')[-1]}-{method}{preset}{config.sampler}-seed{config.seed}")
    try:
        result = run_training(config, run_dir=folder, progress=not args.no_progress, resume=bool(args.resume),
                              new_lr=new_lr)
    finally:
        remove_if_empty(folder)  # a run that failed before writing anything leaves no folder
    s = result.summary
    accs = ", ".join(f"{m} {100 * s['test'][m]['acc']:.1f}" for m in s["modalities"])
    counts = ", ".join(f"{m} {n:.1f}" for m, n in s["mean_counts"].items())
    print(f"{s['task']} / {s['method']} / {s['sampler']} / seed {s['seed']}: "
          f"fused test acc {100 * s['test']['fused']['acc']:.1f} % "
          f"({accs}); final |CMD| {s['final_gap']:.3f}; {s['iterations']} iterations, {s['optimizer_steps']} optimiser "
          f"steps, {s['epochs']:.1f} epochs; "
          f"mean counts {counts}; {s['train_seconds']:.1f} s")
    print(f"results: {folder / 'results.json'}  |  tensorboard --logdir {folder / 'tb'}")
    return 0
