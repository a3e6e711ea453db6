"""``dus-gym bench``: tasks x methods x samplers x seeds in parallel."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from dus_gym.cli.common import add_allow_task_import, add_preset_argument, check_task_spec, names
from dus_gym.core.config import ConfigError
from dus_gym.core.files import read_yaml
from dus_gym.core.methods import METHODS
from dus_gym.core.specs import deep_merge, parse_overrides
from dus_gym.experiments.bench import BenchConfig, bench_config_from_args, readme_block_name, run_bench
from dus_gym.experiments.bench import write_readme_block as write_bench_block
from dus_gym.experiments.results import check_readme_block
from dus_gym.samplers import SAMPLERS
from dus_gym.tasks import check_task_source


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of this command."""
    parser.add_argument("--config", help="YAML file of bench settings (BenchConfig keys)")
    parser.add_argument("--tasks", nargs="+",
                        help=f"tasks with a spec in envs/ (default: {' '.join(BenchConfig.tasks)})")
    parser.add_argument("--methods", nargs="+", help=f"among {names(METHODS)} (default: all)")
    parser.add_argument("--samplers", nargs="+", help=f"among {names(SAMPLERS)} (default: "
                                                      f"{' '.join(BenchConfig.samplers)}; ppo needs --policy)")
    parser.add_argument("--seeds", type=int, nargs="+", help=f"default: {' '.join(map(str, BenchConfig.seeds))}")
    parser.add_argument("--iterations", type=int, help="budget of every run (default: each task spec's)")
    parser.add_argument("--workers", type=int, help="parallel processes (default: CPU count)")
    parser.add_argument("--out", dest="out_dir", help=f"output folder (default {BenchConfig.out_dir}); finished cells "
                                                      "are kept")
    parser.add_argument("--policy", help="saved policy folder (train_policy.py), for the ppo sampler")
    parser.add_argument("--no-alone", action="store_true", help="skip the modalities trained alone")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="run-config override for every cell, e.g. --set learner.device=cuda")
    parser.add_argument("--method-kwargs", action="append", metavar="METHOD.KEY=VALUE",
                        help="a keyword of one method, e.g. --method-kwargs ogm-ge.alpha=0.5")
    add_preset_argument(parser)
    parser.add_argument("--readme", metavar="FILE",
                        help="also write the table into this file's bench block (docs/results/bench.md): "
                             "bench, or bench-authors under --preset authors")
    parser.add_argument("--no-progress", action="store_true")
    add_allow_task_import(parser)


def main(args: argparse.Namespace) -> int:
    """``dus-gym bench``."""
    values = read_yaml(Path(args.config)) if args.config else {}
    if args.tasks is None and isinstance(values.get("tasks"), list):  # the tasks would come from the file
        for task in values["tasks"]:
            check_task_source(task, f"the bench config {args.config}", args.allow_task_import)
    if not isinstance(values.get("overrides") or {}, dict):
        raise ConfigError(f"the bench config {args.config}: overrides must be a mapping of run-config keys")
    overrides = deep_merge(dict(values.get("overrides") or {}), parse_overrides(args.set))
    values.update({k: getattr(args, k) for k in ("tasks", "methods", "samplers", "seeds", "workers", "out_dir",
                                                  "policy", "preset") if getattr(args, k) is not None})
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
        check_readme_block(Path(args.readme), readme_block_name(bench.preset))  # before hours of runs, not after
    start = time.perf_counter()
    summary = run_bench(bench, progress=not args.no_progress)
    minutes = (time.perf_counter() - start) / 60
    print(summary["table"])
    processes = f"{summary['workers']} process{'es' if summary['workers'] > 1 else ''}"
    print(f"{summary['cells']} cells ({summary['ran']} run now, {processes}) in "
          f"{minutes:.1f} min; results: {Path(bench.out_dir) / 'results.csv'}, table.md, "
          + ", ".join(Path(p).name for p in summary["plots"]))
    if args.readme:
        write_bench_block(Path(args.readme), bench, summary, "dus-gym " + " ".join(args.argv))
        print(f"table written into {args.readme}")
    return 0
