"""What several commands share: the run-config flags, their resolution, and the table report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dus_gym.core.config import LearnerConfig, RunConfig
from dus_gym.core.files import read_yaml
from dus_gym.core.methods import METHODS
from dus_gym.core.methods.presets import PRESETS
from dus_gym.core.specs import deep_merge, parse_overrides, resolve_run_config, task_spec_path
from dus_gym.envs.registration import is_shipped
from dus_gym.experiments.results import write_readme_block
from dus_gym.tasks import OPT_IN, TASKS, check_spec_sources


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
                              flags=flags, overrides=overrides, preset=getattr(args, "preset", None) or "common")


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


def add_allow_task_import(parser: argparse.ArgumentParser) -> None:
    """The ``--allow-task-import`` opt-in."""
    parser.add_argument(OPT_IN, action="store_true",
                        help="let files read here (config, task spec, run folder, bench config, PPO YAML, a "
                             "resumed run's args.yml) name a task or family generator as module:function, "
                             "which imports and runs that code: only for files you trust")


def add_preset_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--preset`` flag: the project's common recipe or each method's authors' values."""
    parser.add_argument("--preset", choices=PRESETS,
                        help="common (default): the task spec's optimiser and lr, the methods' defaults; authors: each "
                             "method's optimiser, lr, schedule and keywords from its authors' script (docs/bench.md, "
                             "Presets); --set and --method-kwargs values win over it")


def names(table: Any) -> str:
    """The names of a name table, comma-separated (for --help)."""
    return ", ".join(table.names())


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The run-config flags of ``run``, ``compare`` and ``tune heuristic``."""
    parser.add_argument("--config", help="YAML file of run settings (RunConfig keys)")
    parser.add_argument("--task", help=f"task: {names(TASKS)}, or package.module:function "
                                       f"(default {RunConfig.task})")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--iterations", type=int, help="budget in learner iterations")
    budget.add_argument("--epochs", type=float, help="budget in epochs at the base batch size B")
    parser.add_argument("--device", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--method", help=f"balancing method: {names(METHODS)} (default {LearnerConfig.method})")
    parser.add_argument("--run-dir", help=f"parent folder of run folders (default {RunConfig.run_dir})")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override any config key, e.g. --set learner.lr=0.1 --set cmd.source=probe")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_allow_task_import(parser)


def report(args: argparse.Namespace, block: str, title: str, table: str, results: Path) -> int:
    """Print a comparison's table and where its results are; write it into ``--readme``'s ``block``."""
    print(title)
    print(table)
    print(f"results: {results}")
    if args.readme:
        write_readme_block(Path(args.readme), block, table, "dus-gym " + " ".join(args.argv))
        print(f"table written into {args.readme}")
    return 0
