"""``dus-gym tune heuristic|ppo`` (Optuna; studies resume from STUDY/study.db) and ``dus-gym tune report``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dus_gym.agents.hyperparams import load_hyperparams
from dus_gym.cli.common import add_allow_task_import, add_common_arguments, resolve_config
from dus_gym.core.config import ConfigError, RunConfig, from_dict
from dus_gym.core.specs import parse_overrides
from dus_gym.experiments.results import check_readme_block, write_readme_block
from dus_gym.experiments.resume import check_hyperparams_task
from dus_gym.experiments.tune import SEARCHABLE, HeuristicTuneConfig, studies_table, tune_heuristic
from dus_gym.experiments.tune_ppo import PPOTuneConfig, tune_ppo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The targets ``heuristic``, ``ppo`` and ``report``, each with its flags."""
    targets = parser.add_subparsers(dest="target", required=True)
    h, hc = targets.add_parser("heuristic", help="alpha, n_min and warm-up of the DUS heuristic on a task"), \
        HeuristicTuneConfig
    add_common_arguments(h)
    h.add_argument("--trials", type=int, default=hc.n_trials, help=f"finished trials the study should hold "
                                                                 f"(default {hc.n_trials})")
    h.add_argument("--timeout", type=float, help="seconds of search in this call (the study resumes later)")
    h.add_argument("--seeds", type=int, nargs="+", default=list(hc.seeds), help="learner seeds of every trial")
    h.add_argument("--eval-seeds", type=int, nargs="+", default=list(hc.eval_seeds),
                   help="held-out seeds of the tuned-vs-default comparison")
    h.add_argument("--study", help="study folder (default RUN_DIR/tune-TASK-heuristic; run again to resume)")
    h.add_argument("--sampler-seed", type=int, default=hc.sampler_seed, help="seed of Optuna's TPE sampler")
    h.add_argument("--search", nargs="+", choices=SEARCHABLE, default=list(hc.search),
                   help="the settings searched; the others keep the task's (default: all three)")
    h.add_argument("--startup-trials", type=int, default=hc.n_startup_trials,
                   help=f"random trials before TPE and before pruning (default {hc.n_startup_trials})")
    h.add_argument("--workers", type=int, default=hc.workers,
                   help="processes of the final comparison's runs (default 1: in this process)")
    h.add_argument("--readme", metavar="FILE",
                   help="also write the comparison table into this file's block, e.g. docs/results/tune.md")
    h.add_argument("--readme-block", help="name of that block (default tune-heuristic-TASK)")
    r = targets.add_parser("report", help="one table of several heuristic studies (e.g. one per method)")
    r.add_argument("studies", nargs="+", metavar="STUDY", help="study folders of dus-gym tune heuristic")
    r.add_argument("--readme", metavar="FILE", help="also write the table into this file's block")
    r.add_argument("--readme-block", default="tune-report", help="name of that block (default tune-report)")
    p, pc = targets.add_parser("ppo", help="PPO's hyper-parameters on a DUS env"), PPOTuneConfig
    p.add_argument("--env", default=pc.env_id, help=f"registered env id (default {pc.env_id})")
    p.add_argument("-conf", "--conf-file", dest="hyperparams", help="RL Zoo style YAML whose entry is the start "
                                                                    "(default agents/ppo.yml)")
    p.add_argument("--env-kwargs", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                   help="env kwargs overrides, e.g. n_iterations=400")
    p.add_argument("--trials", type=int, default=pc.n_trials, help=f"default {pc.n_trials}")
    p.add_argument("--timeout", type=float, help="seconds of search in this call (the study resumes later)")
    p.add_argument("--trial-timesteps", type=int, default=pc.trial_timesteps,
                   help=f"PPO env steps per trial (default {pc.trial_timesteps})")
    p.add_argument("--eval-episodes", type=int, default=pc.n_eval_episodes, help="episodes scoring a trial")
    p.add_argument("--seed", type=int, default=pc.seed)
    p.add_argument("--sampler-seed", type=int, default=pc.sampler_seed)
    p.add_argument("--vec-env", choices=["dummy", "subproc", "vectorized"], default=pc.vec_env)
    p.add_argument("--study", help="study folder (default runs/tune-ENV-ppo; run again to resume)")
    p.add_argument("--no-progress", action="store_true")
    add_allow_task_import(p)


def main(args: argparse.Namespace) -> int:
    """``dus-gym tune heuristic|ppo``."""
    if args.target == "ppo":
        env_kwargs = parse_overrides(args.env_kwargs)
        if args.hyperparams:
            check_hyperparams_task(load_hyperparams(args.hyperparams, args.env).env_kwargs, Path(args.hyperparams),
                                   args.allow_task_import, task="task" not in env_kwargs)
        folder = args.study or f"runs/tune-{args.env.split('/')[-1]}-ppo"
        record = tune_ppo(PPOTuneConfig(
            env_id=args.env, folder=folder, hyperparams=args.hyperparams, env_kwargs=env_kwargs,
            n_trials=args.trials, timeout=args.timeout, trial_timesteps=args.trial_timesteps,
            n_eval_episodes=args.eval_episodes, seed=args.seed, sampler_seed=args.sampler_seed,
            vec_env=args.vec_env, progress=not args.no_progress))
        print(f"best trial {record['best_trial']} of {record['trials_finished']}: final val acc "
              f"{100 * record['best_val_acc']:.1f} %; its entry: {Path(folder) / 'ppo.yml'} "
              f"(train_policy.py -conf {Path(folder) / 'ppo.yml'})")
        return 0
    if args.target == "report":
        return report(args)
    base = from_dict(RunConfig, resolve_config(args, sampler="heuristic"))
    task = base.task.split(":")[-1]
    block = args.readme_block or f"tune-heuristic-{task}"
    if args.readme:
        check_readme_block(Path(args.readme), block)  # before the search, not after
    folder = Path(args.study or Path(base.run_dir) / f"tune-{task}-heuristic")
    record = tune_heuristic(HeuristicTuneConfig(
        base=base, folder=str(folder), n_trials=args.trials, timeout=args.timeout, seeds=tuple(args.seeds),
        eval_seeds=tuple(args.eval_seeds), sampler_seed=args.sampler_seed, n_startup_trials=args.startup_trials,
        search=tuple(args.search), workers=args.workers, progress=not args.no_progress))
    print(f"{record['task']}: best trial {record['best_trial']} of {record['trials_finished']} (val acc "
          f"{100 * record['best_val_acc']:.1f} % over seeds {record['tuning_seeds']}); test accuracy in % on "
          f"held-out seeds {record['eval_seeds']}:")
    print(record["table"])
    print(f"settings: {folder / 'heuristic.yml'} (agents/heuristic.yml format), {folder / 'best.yaml'} "
          f"(dus-gym run --config); results: {folder / 'evaluation.json'}")
    if args.readme:
        write_readme_block(Path(args.readme), block, record["table"], "dus-gym " + " ".join(args.argv))
        print(f"table written into {args.readme}")
    return 0


def report(args: argparse.Namespace) -> int:
    """``dus-gym tune report``: the studies' evaluations in one table (stdout, and a file's block)."""
    if args.readme:
        check_readme_block(Path(args.readme), args.readme_block)
    records = []
    for folder in args.studies:
        path = Path(folder) / "evaluation.json"
        if not path.is_file():
            raise ConfigError(f"{path}: no such file; a study folder of dus-gym tune heuristic holds it once its "
                              "comparison has run")
        try:
            records.append(json.loads(path.read_text()))
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path} is not a study's evaluation ({err}); run its dus-gym tune heuristic command "
                              "again") from err
    try:
        table = studies_table(records)
    except (KeyError, TypeError) as err:
        raise ConfigError(f"a study's evaluation.json lacks {err}: run its dus-gym tune heuristic command again") \
            from err
    except ValueError as err:
        raise ConfigError(str(err)) from err
    print(table)
    if args.readme:
        write_readme_block(Path(args.readme), args.readme_block, table, "dus-gym " + " ".join(args.argv))
        print(f"table written into {args.readme}")
    return 0
