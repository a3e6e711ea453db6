"""Command line: ``dus-gym run``, ``compare``, ``bench``, ``train-policy``, ``tune``, ``reference`` and ``prepare``.

``run`` trains one task with one sampler; ``compare`` runs samplers x seeds; ``bench`` runs
tasks x methods x samplers x seeds; ``train-policy`` trains a sampling policy with PPO;
``tune`` searches the heuristic's or PPO's settings with Optuna (the ``tune`` extra);
``reference`` runs the reference agents of an env id and their normalised scores;
``prepare`` preprocesses a raw data set release (audio-visual, image-text, gesture).

Run configurations are resolved by :func:`dus_gym.core.specs.resolve_run_config`, later wins: the
RunConfig defaults; the task spec ``envs/<task>.yaml``; a ``--config`` YAML file; the sampler
settings ``agents/<sampler>.yml`` (key: the task name, else ``default``); command-line flags;
``--set key.sub=value`` overrides. Defaults and choices shown in ``--help`` come from the
configuration dataclasses and the name tables (tasks, samplers, methods, vec-env kinds).

A ``module:function`` task is imported when given on the command line; a file read from disk (a
config, a task spec given with ``--task``, a run folder's config.yaml, a bench config, agents/ppo.yml,
a resumed policy run's args.yml) may name one, or a family generator, only with ``--allow-task-import``
(:func:`dus_gym.tasks.check_spec_sources`); a file's own ``allow_task_import`` grants nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from dus_gym.core.config import ConfigError, LearnerConfig, RunConfig, check_distinct, check_seeds, from_dict, to_dict
from dus_gym.core.files import new_run_folder, read_yaml, remove_if_empty, write_text_atomic
from dus_gym.core.methods import METHODS
from dus_gym.core.specs import deep_merge, parse_overrides, resolve_run_config, task_spec_path
from dus_gym.experiments.bench import README_BLOCK as BENCH_BLOCK
from dus_gym.experiments.bench import BenchConfig, bench_config_from_args, run_bench
from dus_gym.experiments.compare import SamplerSpec, check_controls, run_comparison
from dus_gym.experiments.family import FamilyEvaluationConfig, run_family_evaluation
from dus_gym.experiments.readme import check_readme_block, write_readme_block
from dus_gym.experiments.run import CHECKPOINT_NAME, check_resumable, run_training
from dus_gym.experiments.tune import HeuristicTuneConfig, tune_heuristic
from dus_gym.rl.hyperparams import load_hyperparams
from dus_gym.rl.policy_run import check_hyperparams_task, resumed_settings
from dus_gym.rl.reference import AGENTS as REFERENCE_AGENTS
from dus_gym.rl.reference import run_reference
from dus_gym.rl.registration import is_shipped
from dus_gym.rl.train_policy import TrainPolicyConfig, train_policy
from dus_gym.rl.tune_ppo import PPOTuneConfig, tune_ppo
from dus_gym.rl.vec_envs import VEC_ENVS
from dus_gym.samplers import SAMPLERS, overrides_per_sampler
from dus_gym.tasks import OPT_IN, TASKS, check_spec_sources, check_task_source
from dus_gym.tasks.prepare import PREPARERS, prepare


def resolve_config(args: argparse.Namespace, sampler: str | None = None,
                   overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run-config mapping of the command line: the config file, flags and ``--set`` overrides on the specs.

    ``overrides``: the ``--set`` overrides as this sampler takes them (default: all of them).
    """
    flags: dict[str, Any] = {}
    if args.iterations is not None:
        flags["n_iterations"], flags["epochs"] = args.iterations, None
    if args.epochs is not None:
        flags["n_iterations"], flags["epochs"] = None, args.epochs
    if args.device is not None:
        flags = deep_merge(flags, {"learner": {"device": args.device}})
    if getattr(args, "method", None) is not None:
        flags = deep_merge(flags, {"learner": {"method": args.method}})
    if getattr(args, "seed", None) is not None:
        flags["seed"] = args.seed
    if args.run_dir is not None:
        flags["run_dir"] = args.run_dir
    config = read_yaml(Path(args.config)) if args.config else None
    overrides = parse_overrides(args.set) if overrides is None else overrides
    if config:  # its task only when the task would come from the file; its family generator always
        check_spec_sources(config, f"the config file {args.config}", args.allow_task_import,
                           task=args.task is None and "task" not in overrides)
    check_task_spec(args.task, args.allow_task_import)
    return resolve_run_config(args.task, config=config, sampler=sampler or getattr(args, "sampler", None),
                              flags=flags, overrides=overrides)


def check_task_spec(task: str | None, allow_import: bool) -> None:
    """Refuse a user's task spec (``--task path/to/spec.yaml``) that names code without the opt-in.

    The spec is a file: its ``task`` and its ``family.generator`` may be ``module:function`` paths only
    with ``--allow-task-import``, whatever typed its path. The shipped specs (envs/) are trusted like the code.
    """
    if not task:
        return
    path = task_spec_path(task)
    if path.suffix in (".yaml", ".yml") and path.is_file() and not is_shipped(path):
        check_spec_sources(read_yaml(path), f"the task spec {path}", allow_import)


def _allow_task_import(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(OPT_IN, action="store_true",
                        help="let files read here (config, task spec, run folder, bench config, PPO YAML, a "
                             "resumed run's args.yml) name a task or family generator as module:function, "
                             "which imports and runs that code: only for files you trust")


def _names(table: Any) -> str:
    return ", ".join(table.names())


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file of run settings (RunConfig keys)")
    parser.add_argument("--task", help=f"task: {_names(TASKS)}, or package.module:function "
                                       f"(default {RunConfig.task})")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--iterations", type=int, help="budget in learner iterations")
    budget.add_argument("--epochs", type=float, help="budget in epochs at the base batch size B")
    parser.add_argument("--device", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--method", help=f"balancing method: {_names(METHODS)} (default {LearnerConfig.method})")
    parser.add_argument("--run-dir", help=f"parent folder of run folders (default {RunConfig.run_dir})")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override any config key, e.g. --set learner.lr=0.1 --set cmd.source=probe")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _allow_task_import(parser)


def build_parser() -> argparse.ArgumentParser:
    """The ``dus-gym`` argument parser."""
    parser = argparse.ArgumentParser(prog="dus-gym", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train a task with one sampler and one seed")
    _common(run)
    run.add_argument("--sampler", help=f"sampler: {_names(SAMPLERS)} (default {RunConfig.sampler})")
    run.add_argument("--policy", help="saved policy folder (train_policy.py), for --sampler ppo; trusted input only "
                     "(its policy.zip is unpickled)")
    run.add_argument("--seed", type=int)
    run.add_argument("--resume", metavar="RUN_FOLDER",
                     help="continue an interrupted run from its checkpoint.pt, with its own config.yaml")
    run.add_argument("--lr", type=float, help="with --resume: continue from the last good checkpoint with this "
                                              f"learning rate (after a divergence; recorded in RUN/{CHANGES_FILE})")
    compare = sub.add_parser("compare", help="run several samplers over several seeds and print a table")
    _common(compare)
    compare.add_argument("--samplers", nargs="+", help=f"among {_names(SAMPLERS)} (default uniform heuristic)")
    compare.add_argument("--seeds", type=int, nargs="+",
                         help="default 0 1 2 3 4 (a task family: 0 1 2, on every instance)")
    compare.add_argument("--no-alone", action="store_true",
                         help="skip the modalities trained alone (and so the late-fusion row)")
    compare.add_argument("--policy", action="append", metavar="[LABEL=]PATH",
                         help="saved policy folder (train_policy.py): PATH for the ppo sampler; LABEL=PATH adds a row "
                              "LABEL acting with that policy (repeatable, e.g. family=runs/a specialist=runs/b)")
    compare.add_argument("--allocation", action="store_true",
                         help="the heuristic splits exactly M x B samples per iteration (as uniform and an "
                              "allocation policy spend): a compute-fair comparison")
    compare.add_argument("--controls", action="store_true",
                         help="with ppo and two or more seeds: add a constant at the policy's mean counts and its "
                              "open-loop replay")
    compare.add_argument("--grid", action="store_true", help="add the best constant counts of a small grid")
    family = compare.add_argument_group(
        "task families", "with --task naming a family spec (e.g. synthetic-family): every row on the same "
        "(instance, seed) cases of the family's held-out instances, paired case by case (docs/protocol.md)")
    family.add_argument("--instances", choices=["held-out", "train", "all"], default="held-out")
    family.add_argument("--n-instances", type=int, help="the first N instances of that pool (default: all)")
    family.add_argument("--no-cmd-policy", action="append", default=[], metavar="PATH",
                        help="a policy trained with env hide=[cmd] by the same recipe (repeatable: its seeds), for "
                             "the ppo-no-cmd row")
    family.add_argument("--no-val-policy", action="append", default=[], metavar="PATH",
                        help="a policy trained with env hide=[val] (repeatable), for the ppo-no-val row")
    family.add_argument("--blind-policy", help="a policy trained with env blind=true, for the equivariant-blind row "
                        "(uniform by construction for a modality-agnostic policy)")
    family.add_argument("--no-policy-controls", action="store_true",
                        help="skip the policies' replays and commit rows")
    family.add_argument("--alphas", type=float, nargs="+", default=list(FamilyEvaluationConfig.alpha_grid),
                        help="the heuristic's alphas tried on training instances")
    family.add_argument("--sources", nargs="+", choices=["train", "val", "probe"],
                        default=list(FamilyEvaluationConfig.sources), help="the heuristic's CMD sources tried")
    family.add_argument("--tune-instances", type=int, default=FamilyEvaluationConfig.tune_instances)
    family.add_argument("--tune-seeds", type=int, nargs="+", default=list(FamilyEvaluationConfig.tune_seeds))
    family.add_argument("--heuristic-from", metavar="FAMILY_JSON",
                        help="use the heuristic tuned by an earlier evaluation (its family.json) instead of tuning "
                             "here: for a family without training instances (out of distribution)")
    family.add_argument("--no-reversed", action="store_true", help="skip the reversed-sign heuristic")
    family.add_argument("--no-oracle", action="store_true", help="skip the per-instance best constant allocation")
    family.add_argument("--no-ogm-ge", action="store_true", help="skip OGM-GE with uniform sampling")
    family.add_argument("--workers", type=int, help="parallel processes (default: CPU count)")
    family.add_argument("--out", help="output folder (default runs/family-<spec>); finished cases are kept")
    compare.add_argument("--readme", metavar="FILE",
                         help="also write the table into this file's block (see --readme-block), e.g. "
                              "docs/results/compare.md (docs/results/family.md for a task family)")
    compare.add_argument("--readme-block", help="name of that block: <!-- NAME:start --> ... <!-- NAME:end --> "
                                                "(default compare-<task>)")
    bench = sub.add_parser("bench", help="tasks x methods x samplers x seeds in parallel: CSV, table and plots")
    bench.add_argument("--config", help="YAML file of bench settings (BenchConfig keys)")
    bench.add_argument("--tasks", nargs="+",
                       help=f"tasks with a spec in envs/ (default: {' '.join(BenchConfig.tasks)})")
    bench.add_argument("--methods", nargs="+", help=f"among {_names(METHODS)} (default: all)")
    bench.add_argument("--samplers", nargs="+", help=f"among {_names(SAMPLERS)} (default: "
                                                     f"{' '.join(BenchConfig.samplers)}; ppo needs --policy)")
    bench.add_argument("--seeds", type=int, nargs="+", help=f"default: {' '.join(map(str, BenchConfig.seeds))}")
    bench.add_argument("--iterations", type=int, help="budget of every run (default: each task spec's)")
    bench.add_argument("--workers", type=int, help="parallel processes (default: CPU count)")
    bench.add_argument("--out", dest="out_dir", help=f"output folder (default {BenchConfig.out_dir}); finished cells "
                                                     "are kept")
    bench.add_argument("--policy", help="saved policy folder (train_policy.py), for the ppo sampler")
    bench.add_argument("--no-alone", action="store_true", help="skip the modalities trained alone")
    bench.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="run-config override for every cell, e.g. --set learner.device=cuda")
    bench.add_argument("--method-kwargs", action="append", metavar="METHOD.KEY=VALUE",
                       help="a keyword of one method, e.g. --method-kwargs ogm-ge.alpha=0.5")
    bench.add_argument("--readme", metavar="FILE",
                       help="also write the table into this file's bench block (docs/results/bench.md)")
    bench.add_argument("--no-progress", action="store_true")
    _allow_task_import(bench)
    train = sub.add_parser("train-policy", help="train a sampling policy with PPO (same as train_policy.py)")
    add_train_policy_arguments(train)
    reference = sub.add_parser("reference", help="run the reference agents (uniform, heuristic, replay, random, "
                               "constants) on an env id over seeds: returns, accuracies, normalised scores")
    reference.add_argument("--env", default=TrainPolicyConfig.env_id,
                           help=f"registered env id (default {TrainPolicyConfig.env_id})")
    reference.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="episode seeds (default 0 1 2)")
    reference.add_argument("--agents", nargs="+", choices=REFERENCE_AGENTS, default=list(REFERENCE_AGENTS),
                           help="which agents (default: all; uniform always runs, it is the score's zero)")
    reference.add_argument("--env-kwargs", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                           help="env kwargs overrides, e.g. n_iterations=400 iterations_per_step=10")
    reference.add_argument("--run-dir", default=RunConfig.run_dir, help="parent of the output folder")
    reference.add_argument("--readme", metavar="FILE",
                           help="also write the table into this file's block (see --readme-block), "
                                "e.g. docs/results/reference.md")
    reference.add_argument("--readme-block", help="name of that block (default reference-<env name>, e.g. "
                                                  "reference-Synthetic-v0)")
    reference.add_argument("--no-progress", action="store_true")
    add_tune_parser(sub)
    prepare = sub.add_parser("prepare", help="preprocess a raw data set release (CREMA-D, Kinetics-Sounds, "
                                             "Twitter2015, Sarcasm, NVGesture)")
    prepare.add_argument("dataset", choices=PREPARERS.names())
    prepare.add_argument("src", help="the raw release (see docs/data.md: CREMA-D AudioWAV/ and VideoFlash/; "
                                     "Kinetics-Sounds videos/; Twitter2015 *.tsv and twitter2015_images/; Sarcasm "
                                     "text/ and dataset_image/; NVGesture the .lst lists and Video_data/)")
    prepare.add_argument("dst", help="output folder (what is already there is skipped)")
    prepare.add_argument("--train-list", help="published train list, if not at its place in SRC")
    prepare.add_argument("--val-list", help="published validation list (Twitter2015, Sarcasm)")
    prepare.add_argument("--test-list", help="published test list")
    prepare.add_argument("--tokenizer", help="BERT tokenizer: hub name, local folder or vocab.txt (Twitter2015, "
                                             "Sarcasm; default bert-base-uncased)")
    prepare.add_argument("--max-length", type=int, help="tokens per text (Twitter2015, Sarcasm; default 30)")
    prepare.add_argument("--image-size", type=int, help="side of the stored images (default Twitter2015 384, "
                                                        "Sarcasm 224)")
    prepare.add_argument("--missing-images", choices=["error", "blank"],
                         help="a listed image that is missing or unreadable: stop (default) or store a black image")
    prepare.add_argument("--frame-size", type=int, help="side of the stored frames (NVGesture; default 256)")
    prepare.add_argument("--frames", type=int, help="frames stored per clip (NVGesture; default 80)")
    prepare.add_argument("--workers", type=int, help="worker processes (default: CPU count)")
    prepare.add_argument("--no-progress", action="store_true")
    return parser


def add_tune_parser(sub: Any) -> None:
    """``dus-gym tune heuristic`` and ``dus-gym tune ppo`` (Optuna; studies resume from STUDY/study.db)."""
    tune = sub.add_parser("tune", help="search the heuristic's or PPO's settings with Optuna (resumable studies)")
    targets = tune.add_subparsers(dest="target", required=True)
    h, hc = targets.add_parser("heuristic", help="alpha, n_min and warm-up of the DUS heuristic on a task"), \
        HeuristicTuneConfig
    _common(h)
    h.add_argument("--trials", type=int, default=hc.n_trials, help=f"finished trials the study should hold "
                                                                 f"(default {hc.n_trials})")
    h.add_argument("--timeout", type=float, help="seconds of search in this call (the study resumes later)")
    h.add_argument("--seeds", type=int, nargs="+", default=list(hc.seeds), help="learner seeds of every trial")
    h.add_argument("--eval-seeds", type=int, nargs="+", default=list(hc.eval_seeds),
                   help="held-out seeds of the tuned-vs-default comparison")
    h.add_argument("--study", help="study folder (default RUN_DIR/tune-TASK-heuristic; run again to resume)")
    h.add_argument("--sampler-seed", type=int, default=hc.sampler_seed, help="seed of Optuna's TPE sampler")
    h.add_argument("--readme", metavar="FILE",
                   help="also write the comparison table into this file's block, e.g. docs/results/tune.md")
    h.add_argument("--readme-block", help="name of that block (default tune-heuristic-TASK)")
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
    _allow_task_import(p)


def tune_command(args: argparse.Namespace) -> int:
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
    base = from_dict(RunConfig, resolve_config(args, sampler="heuristic"))
    task = base.task.split(":")[-1]
    block = args.readme_block or f"tune-heuristic-{task}"
    if args.readme:
        check_readme_block(Path(args.readme), block)  # before the search, not after
    folder = Path(args.study or Path(base.run_dir) / f"tune-{task}-heuristic")
    record = tune_heuristic(HeuristicTuneConfig(
        base=base, folder=str(folder), n_trials=args.trials, timeout=args.timeout, seeds=tuple(args.seeds),
        eval_seeds=tuple(args.eval_seeds), sampler_seed=args.sampler_seed, progress=not args.no_progress))
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


def prepare_command(args: argparse.Namespace) -> int:
    """``dus-gym prepare``."""
    options = {key: getattr(args, key) for key in ("train_list", "val_list", "test_list", "tokenizer", "max_length",
                                                  "image_size", "missing_images", "frame_size", "frames", "workers")}
    metadata = prepare(args.dataset, args.src, args.dst, progress=not args.no_progress, **options)
    counts = " / ".join(f"{n} {split}" for split, n in metadata["counts"].items())
    print(f"{args.dataset}: {counts} samples, {len(metadata['classes'])} classes, in {args.dst}")
    return 0


def add_train_policy_arguments(parser: argparse.ArgumentParser) -> None:
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
    _allow_task_import(parser)


def given_flags(add_arguments: Any, argv: Sequence[str]) -> dict[str, Any]:
    """The options typed in ``argv`` (destination -> value), defaults left out: what the user asked for."""
    parser = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    add_arguments(parser)
    for action in parser._actions:  # defaults given per argument: drop them, so that only typed options remain
        action.default = argparse.SUPPRESS
    return vars(parser.parse_args(list(argv)))


def train_policy_command(args: argparse.Namespace) -> int:
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
        typed = {_TRAIN_FIELDS.get(dest, dest) for dest in given_flags(add_train_policy_arguments, argv)}
        values = {k: v for k, v in to_dict(config).items() if k in typed}
        config = from_dict(TrainPolicyConfig, resumed_settings(Path(args.resume), values))
    prefix = [] if Path(sys.argv[0]).name == "train_policy.py" else ["train-policy"]
    train_policy(config, argv=[sys.argv[0], *prefix, *argv])  # command.txt records what was typed
    return 0


_TRAIN_FIELDS = {"env": "env_id", "no_evaluate": "evaluate", "no_controls": "controls", "no_progress": "progress",
                 "ray_address": "ray", "ray_cpus_per_env": "ray", "ray_gpus_per_env": "ray"}
"""train-policy flags whose TrainPolicyConfig field has another name (the ray ones fill the ``ray`` mapping)."""


CHANGES_FILE = "changes.yaml"
"""Changes made on resuming a run (``--lr``), appended in order; config.yaml stays as the run wrote it."""

RESUME_CONFLICTS = ("config", "task", "iterations", "epochs", "set", "sampler", "policy", "seed", "method", "run_dir")
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
    if not (folder / "config.yaml").is_file():
        raise FileNotFoundError(f"no run to resume in {folder}: expected a run folder with config.yaml")
    check_resumable(folder)
    data = read_yaml(folder / "config.yaml")
    check_spec_sources(data, f"the run folder's {folder / 'config.yaml'}", args.allow_task_import)
    changes_path = folder / CHANGES_FILE
    changes = read_yaml(changes_path).get("changes", []) if changes_path.is_file() else []
    if not isinstance(changes, list) or not all(isinstance(c, dict) and "learner.lr" in c for c in changes):
        raise ConfigError(f"{changes_path} is malformed: expected 'changes:' with entries holding learner.lr")
    if args.lr is not None:
        changes.append({"learner.lr": args.lr, "at": time.strftime("%Y-%m-%d %H:%M:%S")})
    for change in changes:
        data = deep_merge(data, {"learner": {"lr": change["learner.lr"]}})
    if args.device is not None:
        data = deep_merge(data, {"learner": {"device": args.device}})
    config = from_dict(RunConfig, data)
    if args.lr is not None:
        write_text_atomic(changes_path, yaml.safe_dump({"changes": changes}, sort_keys=False))
    return config, folder, bool(changes)


def run_command(args: argparse.Namespace) -> int:
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
        data = resolve_config(args)
        if args.policy:
            data = deep_merge(data, {"sampler_kwargs": {"policy": args.policy}})
        config = from_dict(RunConfig, data)
        method = "" if config.learner.method == LearnerConfig.method else f"{config.learner.method}-"
        folder = new_run_folder(config.run_dir,
                                f"{config.task.split(':')[-1]}-{method}{config.sampler}-seed{config.seed}")
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


def family_command(args: argparse.Namespace, run_dir: str) -> int:
    """``dus-gym compare`` on a task family (see :mod:`dus_gym.experiments.family`)."""
    if args.samplers or args.controls or args.grid or args.config or args.iterations or args.epochs:
        raise ConfigError("a family comparison runs its own rows on the spec's budget: drop --samplers, --controls, "
                          "--grid, --config, --iterations and --epochs (use --set for other settings)")
    if any("=" in text for text in args.policy or []):
        raise ConfigError("a family comparison takes --policy PATH, repeated for the training seeds of one recipe "
                          "(rows ppo#k and ppo), not LABEL=PATH")
    name = Path(args.task).stem
    evaluation = FamilyEvaluationConfig(
        spec=args.task, instances=args.instances, n_instances=args.n_instances,
        seeds=tuple(args.seeds) if args.seeds else FamilyEvaluationConfig.seeds, policies=tuple(args.policy or ()),
        no_cmd_policies=tuple(args.no_cmd_policy), no_val_policies=tuple(args.no_val_policy),
        blind_policy=args.blind_policy, controls=not args.no_policy_controls, alpha_grid=tuple(args.alphas),
        sources=tuple(args.sources), tune_instances=args.tune_instances, tune_seeds=tuple(args.tune_seeds),
        heuristic_from=args.heuristic_from,
        reversed_heuristic=not args.no_reversed,
        oracle=not args.no_oracle, ogm_ge=not args.no_ogm_ge, workers=args.workers,
        out_dir=args.out or str(Path(run_dir) / f"family-{name}"), overrides=parse_overrides(args.set))
    block = args.readme_block or f"family-{name}"
    if args.readme:
        check_readme_block(Path(args.readme), block)
    record = run_family_evaluation(evaluation, progress=not args.no_progress)
    return report(args, block, f"{name}: {len(record['pool'])} {args.instances} instances x seeds "
                  f"{list(evaluation.seeds)}:",
                  record["table"], Path(evaluation.out_dir) / "family.json")


def report(args: argparse.Namespace, block: str, title: str, table: str, results: Path) -> int:
    """Print a comparison's table and where its results are; write it into ``--readme``'s ``block``."""
    print(title)
    print(table)
    print(f"results: {results}")
    if args.readme:
        write_readme_block(Path(args.readme), block, table, "dus-gym " + " ".join(args.argv))
        print(f"table written into {args.readme}")
    return 0


def parse_policies(texts: list[str] | None) -> dict[str, str]:
    """``--policy`` values: ``PATH`` (label "ppo") or ``LABEL=PATH``, by label."""
    return dict(text.split("=", 1) if "=" in text else ("ppo", text) for text in texts or [])


def compare_command(args: argparse.Namespace) -> int:
    """``dus-gym compare``."""
    data = resolve_config(args)
    if data.get("family") is not None:
        return family_command(args, data.get("run_dir", RunConfig.run_dir))
    args.seeds = args.seeds or [0, 1, 2, 3, 4]
    policies = parse_policies(args.policy)
    samplers = list(args.samplers or ["uniform", "heuristic"])
    if "ppo" in policies and "ppo" not in samplers:
        samplers.append("ppo")
    specs, base = [], None
    check_seeds(args.seeds)  # before any run
    check_distinct(samplers, "samplers")
    overrides = overrides_per_sampler(parse_overrides(args.set), samplers)
    for name in samplers:
        config = from_dict(RunConfig, resolve_config(args, sampler=name, overrides=overrides[name]))
        base = base or config
        kwargs = dict(config.sampler_kwargs)
        if name == "ppo":
            if "ppo" not in policies:
                raise ConfigError("the ppo sampler needs --policy PATH (a folder written by train_policy.py)")
            kwargs["policy"] = policies["ppo"]
        if name == "heuristic" and args.allocation:
            kwargs.update(allocation=True, n_min=base.env.n_min)
        specs.append(SamplerSpec(name, name, kwargs))
    specs += [SamplerSpec(label, "ppo", {"policy": path}) for label, path in policies.items() if label != "ppo"]
    check_controls([spec.label for spec in specs], args.seeds, args.controls)  # before any run
    block = args.readme_block or f"compare-{base.task.split(':')[-1]}"
    if args.readme:
        check_readme_block(Path(args.readme), block)  # before the runs, not after
    folder = new_run_folder(base.run_dir, f"compare-{base.task.split(':')[-1]}")
    try:
        record = run_comparison(base, specs, args.seeds, folder, alone=not args.no_alone, controls=args.controls,
                                grid=args.grid, progress=not args.no_progress)
    finally:
        remove_if_empty(folder)
    return report(args, block, f"{record['task']} ({', '.join(record['modalities'])}), seeds {args.seeds}, test "
                  "accuracy in %:", record["table"], folder / "compare.json")


def reference_command(args: argparse.Namespace) -> int:
    """``dus-gym reference``."""
    block = args.readme_block or f"reference-{args.env.split('/')[-1]}"
    if args.readme:
        check_readme_block(Path(args.readme), block)  # before the runs, not after
    check_seeds(args.seeds)
    folder = new_run_folder(args.run_dir, f"reference-{args.env.split('/')[-1]}")
    try:
        record = run_reference(args.env, args.seeds, parse_overrides(args.env_kwargs), args.agents, folder,
                               progress=not args.no_progress)
    finally:
        remove_if_empty(folder)
    gain, lo, hi = record["best_constant_gain"]
    scale = (f"normalised score 0 = uniform, 1 = {record['best_constant']}" if record["score_defined"] else
             f"normalised score undefined: the best constant, {record['best_constant']}, does not beat uniform "
             f"(return {gain:+.4f} [{lo:+.4f}, {hi:+.4f}])")
    if record["skipped"]:
        print(f"{args.env} is a task family (each seed draws an instance with its own number of modalities): "
              f"{' and '.join(record['skipped'])} skipped")
    print(f"{args.env}: reference agents on seeds {args.seeds} ({record['n_iterations']} iterations, "
          f"{record['action_type']} action); {scale}:")
    print(record["table"])
    print(f"results: {folder / 'reference.json'}")
    if args.readme:
        write_readme_block(Path(args.readme), block, record["table"], "dus-gym " + " ".join(args.argv))
        print(f"table written into {args.readme}")
    return 0


def bench_command(args: argparse.Namespace) -> int:
    """``dus-gym bench``."""
    values = read_yaml(Path(args.config)) if args.config else {}
    if args.tasks is None and isinstance(values.get("tasks"), list):  # the tasks would come from the file
        for task in values["tasks"]:
            check_task_source(task, f"the bench config {args.config}", args.allow_task_import)
    if not isinstance(values.get("overrides") or {}, dict):
        raise ConfigError(f"the bench config {args.config}: overrides must be a mapping of run-config keys")
    overrides = deep_merge(dict(values.get("overrides") or {}), parse_overrides(args.set))
    values.update({k: getattr(args, k) for k in ("tasks", "methods", "samplers", "seeds", "workers", "out_dir",
                                                  "policy") if getattr(args, k) is not None})
    for task in values.get("tasks") or []:
        if isinstance(task, str):
            check_task_spec(task, args.allow_task_import)
    if args.iterations is not None:
        values["n_iterations"] = args.iterations
    if args.no_alone:
        values["alone"] = False
    values["overrides"] = overrides
    values["method_kwargs"] = deep_merge(dict(values.get("method_kwargs") or {}), parse_overrides(args.method_kwargs))
    bench = bench_config_from_args(values)
    if args.readme:
        check_readme_block(Path(args.readme), BENCH_BLOCK)  # before hours of runs, not after
    start = time.perf_counter()
    summary = run_bench(bench, progress=not args.no_progress)
    minutes = (time.perf_counter() - start) / 60
    print(summary["table"])
    processes = f"{summary['workers']} process{'es' if summary['workers'] > 1 else ''}"
    print(f"{summary['cells']} cells ({summary['ran']} run now, {processes}) in "
          f"{minutes:.1f} min; results: {Path(bench.out_dir) / 'results.csv'}, table.md, "
          + ", ".join(Path(p).name for p in summary["plots"]))
    if args.readme:
        write_readme_block(Path(args.readme), BENCH_BLOCK, summary["table"], "dus-gym " + " ".join(args.argv))
        print(f"table written into {args.readme}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dus-gym`` console script; bad input gives one line and exit code 2.

    Nothing is added to ``sys.path`` here: a ``module:function`` task is imported with the working
    folder searched after the installed packages, and only then (:mod:`dus_gym.tasks`).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    handlers = {"run": run_command, "compare": compare_command, "bench": bench_command,
                "train-policy": train_policy_command, "tune": tune_command, "reference": reference_command,
                "prepare": prepare_command}
    try:
        return handlers[args.command](args)
    except (ConfigError, ValueError, OSError, RuntimeError, OverflowError, ImportError) as err:
        print(f"dus-gym: error: {error_line(err)}", file=sys.stderr)
        return 2
    except MemoryError as err:
        print(f"dus-gym: error: out of memory{': ' + error_line(err) if str(err) else ''}; lower the sizes asked "
              "for (budget, counts, batch sizes)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = "; `dus-gym run --resume RUN_FOLDER` continues from the last checkpoint" if args.command == "run" else ""
        if args.command == "train-policy":
            hint = "; `train_policy.py --resume RUN_FOLDER` continues from the last checkpoint"
        print(f"dus-gym: interrupted{hint}", file=sys.stderr)
        return 130


MAX_ERROR_LINE = 2000
"""Characters of an error line (a message that repeats a huge value is cut)."""


def error_line(err: BaseException) -> str:
    """The message of ``err`` on one line, at most :data:`MAX_ERROR_LINE` characters."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= MAX_ERROR_LINE else text[:MAX_ERROR_LINE] + " ..."
