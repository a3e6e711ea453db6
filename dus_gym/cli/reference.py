"""``dus-gym reference``: the reference agents of an env id and their normalised scores."""

from __future__ import annotations

import argparse
from pathlib import Path

from dus_gym.core.config import RunConfig, check_seeds
from dus_gym.core.files import new_run_folder, remove_if_empty
from dus_gym.core.specs import parse_overrides
from dus_gym.experiments.reference import AGENTS as REFERENCE_AGENTS
from dus_gym.experiments.reference import run_reference
from dus_gym.experiments.results import check_readme_block, write_readme_block
from dus_gym.experiments.train_policy import TrainPolicyConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of this command."""
    parser.add_argument("--env", default=TrainPolicyConfig.env_id,
                        help=f"registered env id (default {TrainPolicyConfig.env_id})")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="episode seeds (default 0 1 2)")
    parser.add_argument("--agents", nargs="+", choices=REFERENCE_AGENTS, default=list(REFERENCE_AGENTS),
                        help="which agents (default: all; uniform always runs, it is the score's zero)")
    parser.add_argument("--env-kwargs", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                        help="env kwargs overrides, e.g. n_iterations=400 iterations_per_step=10")
    parser.add_argument("--run-dir", default=RunConfig.run_dir, help="parent of the output folder")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes, one torch thread each (default 1: in this process)")
    parser.add_argument("--readme", metavar="FILE",
                        help="also write the table into this file's block (see --readme-block), "
                             "e.g. docs/results/reference.md")
    parser.add_argument("--readme-block", help="name of that block (default reference-<env name>, e.g. "
                                               "reference-Synthetic-v0)")
    parser.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> int:
    """``dus-gym reference``."""
    block = args.readme_block or f"reference-{args.env.split('/')[-1]}"
    if args.readme:
        check_readme_block(Path(args.readme), block)  # before the runs, not after
    check_seeds(args.seeds)
    folder = new_run_folder(args.run_dir, f"reference-{args.env.split('/')[-1]}")
    try:
        record = run_reference(args.env, args.seeds, parse_overrides(args.env_kwargs), args.agents, folder,
                               progress=not args.no_progress, workers=args.workers)
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
