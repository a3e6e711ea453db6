"""Command line: ``dus-gym run`` (one training run) and ``dus-gym compare`` (samplers x seeds).

Configuration is resolved in this order, later wins: the RunConfig defaults; the task spec
``envs/<task>.yaml``; a ``--config`` YAML file; the sampler settings ``agents/<sampler>.yml``
(key: the task name, else ``default``); command-line flags; ``--set key.sub=value`` overrides.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from dus_gym.config import ConfigError, RunConfig, from_dict

PACKAGE_ROOT = Path(__file__).resolve().parent


def specs_dir(kind: str) -> Path:
    """Folder of the shipped specs: ``envs`` or ``agents`` (in the wheel, or the source checkout)."""
    packaged = PACKAGE_ROOT / "_specs" / kind
    return packaged if packaged.is_dir() else PACKAGE_ROOT.parent / kind


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping with the safe loader; one clear error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``update``, merging nested mappings key by key."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_override(text: str) -> dict[str, Any]:
    """``"learner.lr=0.1"`` -> ``{"learner": {"lr": 0.1}}`` (the value is read as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override '{text}' must look like key=value (e.g. learner.lr=0.1)")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"override '{text}': the value is not valid YAML") from err
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def sampler_settings(sampler: str, task: str) -> dict[str, Any]:
    """Keyword arguments of ``sampler`` for ``task`` from ``agents/<sampler>.yml`` (or {})."""
    path = specs_dir("agents") / f"{sampler}.yml"
    if not path.is_file():
        return {}
    table = read_yaml(path)
    settings = table.get(task, table.get("default", {}))
    if not isinstance(settings, dict):
        raise ConfigError(f"{path}: the entry for '{task}' must be a mapping")
    return settings


def resolve_config(args: argparse.Namespace, sampler: str | None = None) -> dict[str, Any]:
    """Build the run-config mapping from specs, the config file, flags and overrides."""
    user = read_yaml(Path(args.config)) if args.config else {}
    overrides: dict[str, Any] = {}
    for text in args.set or []:
        overrides = deep_merge(overrides, parse_override(text))
    task = args.task or overrides.get("task") or user.get("task") or RunConfig.task
    spec_path = specs_dir("envs") / f"{task}.yaml"
    data = read_yaml(spec_path) if spec_path.is_file() else {"task": task}
    data = deep_merge(data, user)
    data["task"] = task
    sampler = sampler or getattr(args, "sampler", None) or overrides.get("sampler") or data.get("sampler", "uniform")
    data["sampler"] = sampler
    if "sampler_kwargs" not in user:
        data["sampler_kwargs"] = sampler_settings(sampler, task)
    if args.iterations is not None:
        data["n_iterations"], data["epochs"] = args.iterations, None
    if args.epochs is not None:
        data["n_iterations"], data["epochs"] = None, args.epochs
    if args.device is not None:
        data = deep_merge(data, {"learner": {"device": args.device}})
    if getattr(args, "seed", None) is not None:
        data["seed"] = args.seed
    if args.run_dir is not None:
        data["run_dir"] = args.run_dir
    return deep_merge(data, overrides)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file of run settings (RunConfig keys)")
    parser.add_argument("--task", help="task name (mfeat, synthetic, or package.module:function)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--iterations", type=int, help="budget in learner iterations")
    budget.add_argument("--epochs", type=float, help="budget in epochs at the base batch size B")
    parser.add_argument("--device", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--run-dir", help="parent folder of run folders (default runs)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override any config key, e.g. --set learner.lr=0.1 --set cmd.source=probe")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def build_parser() -> argparse.ArgumentParser:
    """The ``dus-gym`` argument parser."""
    parser = argparse.ArgumentParser(prog="dus-gym", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train a task with one sampler and one seed")
    _common(run)
    run.add_argument("--sampler", help="uniform, heuristic or constant")
    run.add_argument("--seed", type=int)
    compare = sub.add_parser("compare", help="run several samplers over several seeds and print a table")
    _common(compare)
    compare.add_argument("--samplers", nargs="+", default=["uniform", "heuristic"])
    compare.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    compare.add_argument("--no-alone", action="store_true",
                         help="skip the modalities trained alone (and so the late-fusion row)")
    return parser


def _run_folder(parent: str, name: str) -> Path:
    folder = Path(parent) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    suffix = 1
    while folder.exists():
        folder = Path(parent) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{suffix}"
        suffix += 1
    return folder


def cmd_run(args: argparse.Namespace) -> int:
    """``dus-gym run``."""
    from dus_gym.driver import run_training

    config = from_dict(RunConfig, resolve_config(args))
    folder = _run_folder(config.run_dir, f"{config.task.split(':')[-1]}-{config.sampler}-seed{config.seed}")
    result = run_training(config, run_dir=folder, progress=not args.no_progress)
    s = result.summary
    accs = ", ".join(f"{m} {100 * s['test'][m]['acc']:.1f}" for m in s["modalities"])
    counts = ", ".join(f"{m} {n:.1f}" for m, n in s["mean_counts"].items())
    print(f"{s['task']} / {s['sampler']} / seed {s['seed']}: fused test acc {100 * s['test']['fused']['acc']:.1f} % "
          f"({accs}); final |CMD| {s['final_gap']:.3f}; {s['iterations']} iterations, {s['epochs']:.1f} epochs; "
          f"mean counts {counts}; {s['train_seconds']:.1f} s")
    print(f"results: {folder / 'results.json'}  |  tensorboard --logdir {folder / 'tb'}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """``dus-gym compare``."""
    from dus_gym.compare import SamplerSpec, run_comparison

    specs, base = [], None
    for name in args.samplers:
        config = from_dict(RunConfig, resolve_config(args, sampler=name))
        base = base or config
        specs.append(SamplerSpec(name, name, config.sampler_kwargs))
    folder = _run_folder(base.run_dir, f"compare-{base.task.split(':')[-1]}")
    record = run_comparison(base, specs, args.seeds, folder, alone=not args.no_alone, progress=not args.no_progress)
    print(f"{record['task']} ({', '.join(record['modalities'])}), seeds {args.seeds}, test accuracy in %:")
    print(record["table"])
    print(f"results: {folder / 'compare.json'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dus-gym`` console script; bad input gives one line and exit code 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"run": cmd_run, "compare": cmd_compare}
    try:
        return handlers[args.command](args)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        print(f"dus-gym: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dus-gym: interrupted", file=sys.stderr)
        return 130
