"""``dus-gym compare``: samplers x seeds on a task, or every row of a family evaluation."""

from __future__ import annotations

import argparse
from pathlib import Path

from dus_gym.cli.common import add_common_arguments, names, report, resolve_config
from dus_gym.core.config import ConfigError, RunConfig, check_distinct, check_seeds, from_dict
from dus_gym.core.files import new_run_folder, remove_if_empty
from dus_gym.core.specs import parse_overrides
from dus_gym.experiments.compare import SamplerSpec, check_controls, run_comparison
from dus_gym.experiments.family import FamilyEvaluationConfig, run_family_evaluation
from dus_gym.experiments.results import check_readme_block
from dus_gym.samplers import SAMPLERS, overrides_per_sampler


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of this command."""
    add_common_arguments(parser)
    parser.add_argument("--samplers", nargs="+", help=f"among {names(SAMPLERS)} (default uniform heuristic)")
    parser.add_argument("--seeds", type=int, nargs="+",
                        help="default 0 1 2 3 4 (a task family: 0 1 2, on every instance)")
    parser.add_argument("--no-alone", action="store_true",
                        help="skip the modalities trained alone (and so the late-fusion row)")
    parser.add_argument("--policy", action="append", metavar="[LABEL=]PATH",
                        help="saved policy folder (train_policy.py): PATH for the ppo sampler; LABEL=PATH adds a row "
                             "LABEL acting with that policy (repeatable, e.g. family=runs/a specialist=runs/b)")
    parser.add_argument("--allocation", action="store_true",
                        help="the heuristic splits exactly M x B samples per iteration (as uniform and an "
                             "allocation policy spend): a compute-fair comparison")
    parser.add_argument("--controls", action="store_true",
                        help="with ppo and two or more seeds: add a constant at the policy's mean counts and its "
                             "open-loop replay")
    parser.add_argument("--grid", action="store_true", help="add the best constant counts of a small grid")
    parser.add_argument("--workers", type=int, help="parallel processes, one torch thread each (default: 1 for a "
                                                    "task, in this process; the CPU count for a task family)")
    family = parser.add_argument_group(
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
    family.add_argument("--out", help="output folder (default runs/family-<spec>); finished cases are kept")
    parser.add_argument("--readme", metavar="FILE",
                        help="also write the table into this file's block (see --readme-block), e.g. "
                             "docs/results/compare.md (docs/results/family.md for a task family)")
    parser.add_argument("--readme-block", help="name of that block: <!-- NAME:start --> ... <!-- NAME:end --> "
                                               "(default compare-<task>)")


def parse_policies(texts: list[str] | None) -> dict[str, str]:
    """``--policy`` values: ``PATH`` (label "ppo") or ``LABEL=PATH``, by label."""
    return dict(text.split("=", 1) if "=" in text else ("ppo", text) for text in texts or [])


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


def main(args: argparse.Namespace) -> int:
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
                                grid=args.grid, progress=not args.no_progress, workers=args.workers or 1)
    finally:
        remove_if_empty(folder)
    return report(args, block, f"{record['task']} ({', '.join(record['modalities'])}), seeds {args.seeds}, test "
                  "accuracy in %:", record["table"], folder / "compare.json")
