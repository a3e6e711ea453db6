"""Command line: ``dus-gym run``, ``compare``, ``bench``, ``train-policy``, ``tune``, ``reference`` and ``prepare``.

``run`` trains one task with one sampler; ``compare`` runs samplers x seeds; ``bench`` runs
tasks x methods x samplers x seeds; ``train-policy`` trains a sampling policy with PPO;
``tune`` searches the heuristic's or PPO's settings with Optuna (the ``tune`` extra);
``reference`` runs the reference agents of an env id and their normalised scores;
``prepare`` preprocesses a raw data set release (audio-visual, image-text, gesture).

Each command is a module of this package with ``add_arguments(parser)`` and ``main(args)``; only the
command being run is imported (``dus-gym --help`` imports none of them, so it costs little more than
importing gymnasium, docs/getting-started.md gives the ratio).

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
import importlib
import sys
from collections.abc import Sequence

from dus_gym.error import ConfigError

COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("dus_gym.cli.run", "train a task with one sampler and one seed"),
    "compare": ("dus_gym.cli.compare", "run several samplers over several seeds and print a table"),
    "bench": ("dus_gym.cli.bench", "tasks x methods x samplers x seeds in parallel: CSV, table and plots"),
    "train-policy": ("dus_gym.cli.train_policy", "train a sampling policy with PPO (same as train_policy.py)"),
    "tune": ("dus_gym.cli.tune", "search the heuristic's or PPO's settings with Optuna (resumable studies)"),
    "reference": ("dus_gym.cli.reference", "run the reference agents (uniform, heuristic, replay, random, constants) "
                                           "on an env id over seeds: returns, accuracies, normalised scores"),
    "prepare": ("dus_gym.cli.prepare", "preprocess a raw data set release (CREMA-D, Kinetics-Sounds, Twitter2015, "
                                       "Sarcasm, NVGesture)"),
}
"""Command -> (its module, its one-line help)."""

MAX_ERROR_LINE = 2000
"""Characters of an error line (a message that repeats a huge value is cut)."""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``dus-gym`` parser; only ``command``'s flags are added (its module is imported then)."""
    parser = argparse.ArgumentParser(prog="dus-gym", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_, description=help_)
        if name == command:
            importlib.import_module(module).add_arguments(command_parser)
    return parser


def error_line(err: BaseException) -> str:
    """The message of ``err`` on one line, at most :data:`MAX_ERROR_LINE` characters."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= MAX_ERROR_LINE else text[:MAX_ERROR_LINE] + " ..."


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dus-gym`` console script; bad input gives one line and exit code 2.

    Nothing is added to ``sys.path`` here: a ``module:function`` task is imported with the working
    folder searched after the installed packages, and only then (:mod:`dus_gym.tasks`).
    """
    typed = list(argv) if argv is not None else sys.argv[1:]
    command = typed[0] if typed and typed[0] in COMMANDS else None
    parser = build_parser(command)
    args = parser.parse_args(typed)
    args.argv = typed
    try:
        return importlib.import_module(COMMANDS[args.command][0]).main(args)
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


__all__ = ["COMMANDS", "build_parser", "error_line", "main"]
