"""Samplers on a task family's held-out instances: does a policy read the CMD state? (docs/protocol.md).

Every row runs on the same (instance, seed) cases, at the family spec's budget in learner
iterations and, with its allocation action, at exactly M x B samples per iteration; differences
are paired case by case. The rows:

- ``uniform``: B samples of every modality (plain joint training);
- ``heuristic``: the DUS heuristic with the alpha that scored best on *training* instances
  (validation accuracy, a grid of alphas), splitting M x B samples as the allocation does;
- ``oracle``: per instance, the best constant allocation of a small grid, chosen by validation
  accuracy on that very instance (knowledge a policy does not get: an upper reference);
- ``ogm-ge``: OGM-GE (the gradient method) with uniform sampling;
- ``ppo``: the trained policy; ``ppo-replay``: the counts the policy chose on another instance
  of the same M and another seed, replayed open-loop; ``ppo-blind``: the same architecture trained
  with every CMD feature zeroed (it sees the progress only). A policy reads the state only if it
  beats its replay and its blind twin.

Cells run in parallel and are resumable, as the bench's (:func:`dus_gym.experiments.bench.execute_cells`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dus_gym.core.config import MAX_WORKERS, ConfigError, RunConfig, from_dict, to_dict
from dus_gym.core.files import read_yaml, write_text_atomic
from dus_gym.core.specs import deep_merge
from dus_gym.experiments.bench import Cell, execute_cells
from dus_gym.experiments.stats import aggregate_scores, format_aggregates, format_mean_std, format_paired
from dus_gym.rl.registration import spec_path
from dus_gym.samplers.action import allocate
from dus_gym.tasks.families import TaskFamily

ORACLE_SHARES = {2: ((0.1, 0.9), (0.25, 0.75), (0.5, 0.5), (0.75, 0.25), (0.9, 0.1)),
                 3: ((1 / 3, 1 / 3, 1 / 3), (0.6, 0.2, 0.2), (0.2, 0.6, 0.2), (0.2, 0.2, 0.6),
                     (0.1, 0.45, 0.45), (0.45, 0.1, 0.45), (0.45, 0.45, 0.1))}
"""The constant allocations the oracle chooses among, as shares of the M x B samples (by number of modalities)."""


@dataclass(frozen=True)
class FamilyEvaluationConfig:
    """What the family evaluation runs.

    Args:
        spec: the family's spec file (a path, or the name of a shipped spec in envs/).
        instances: the pool the cases come from: "held-out" (default), "train" or "all".
        n_instances: the first this many instances of the pool (None: all).
        seeds: learner seeds of every case.
        policy: a policy folder for the ppo and ppo-replay rows (None: no ppo rows).
        blind_policy: a policy folder trained blind, for the ppo-blind row (None: no such row).
        alpha_grid: the heuristic's alphas tried on training instances.
        tune_instances: how many training instances the alpha is tuned on (one seed each).
        oracle: add the per-instance best constant allocation.
        ogm_ge: add OGM-GE with uniform sampling.
        workers: parallel processes (None: the CPU count).
        out_dir: where cells, the record and the table go.
        overrides: run-config keys applied to every case.
    """

    spec: str = "synthetic-family.yaml"
    instances: str = "held-out"
    n_instances: int | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    policy: str | None = None
    blind_policy: str | None = None
    alpha_grid: tuple[float, ...] = (1.0, 3.0, 10.0, 30.0)
    tune_instances: int = 16
    oracle: bool = True
    ogm_ge: bool = True
    workers: int | None = None
    out_dir: str = "runs/family"
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n_instances is not None and (isinstance(self.n_instances, bool) or not isinstance(self.n_instances, int)
                                             or self.n_instances < 1):
            raise ConfigError(f"n_instances must be a whole number >= 1 (the first N instances of the pool), got "
                              f"{self.n_instances!r}")
        if self.workers is not None and not 1 <= self.workers <= MAX_WORKERS:
            raise ConfigError(f"workers must be from 1 to {MAX_WORKERS}, got {self.workers}")
        if self.blind_policy is not None:
            check_blind_policy(self.blind_policy)
        if len(set(self.seeds)) != len(self.seeds) or not self.seeds:
            raise ConfigError(f"seeds must be distinct and at least one, got {list(self.seeds)}")
        if self.policy is None and self.blind_policy is not None:
            raise ConfigError("ppo-blind is a control of a policy: give --policy too")
        if self.policy is not None and len(self.seeds) < 2:
            raise ConfigError("ppo-replay replays another seed's schedule: give at least two seeds")
        if not self.alpha_grid or self.tune_instances < 1:
            raise ConfigError("the heuristic's alpha needs a grid and at least one training instance to tune on")


def check_blind_policy(path: str) -> None:
    """Refuse a ``--blind-policy`` whose policy.json says it was not trained blind (env.blind)."""
    from dus_gym.samplers.ppo import read_policy_settings, resolve_policy_dir

    folder = resolve_policy_dir(path)
    if read_policy_settings(folder)["env"].get("blind") is not True:
        raise ConfigError(f"the blind policy {folder} was not trained blind (its policy.json has env.blind false): "
                          "train it with --env-kwargs blind=true, or drop --blind-policy")


def family_config(spec: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """The run config of a family spec (a path, or a shipped spec's name, with or without .yaml) and ``overrides``."""
    path = spec_path(spec if Path(spec).suffix else f"{spec}.yaml")
    config = from_dict(RunConfig, deep_merge(read_yaml(path), overrides or {}))
    if config.family is None:
        raise ConfigError(f"{path} describes no task family (no 'family' key)")
    return config


def case_config(base: RunConfig, family: TaskFamily, instance: int, seed: int, sampler: str,
                sampler_kwargs: dict[str, Any], method: str | None = None) -> dict[str, Any]:
    """The run config of one case: the instance's task kwargs, the sampler, the seed; no TensorBoard, no family."""
    data = to_dict(base)
    data.update(task_kwargs=family.task_kwargs(instance), family=None, sampler=sampler, sampler_kwargs=sampler_kwargs,
                seed=seed, tensorboard=False)
    if method is not None:
        data["learner"] = dict(data["learner"], method=method, method_kwargs={})
    return to_dict(from_dict(RunConfig, data))


def _cell(label: str, instance: int, seed: int, config: dict[str, Any]) -> Cell:
    return Cell(f"{label}/i{instance}/seed{seed}", f"i{instance}", config["learner"]["method"], label, seed, config)


def _final_val(record: dict[str, Any]) -> float:
    curve = record["summary"].get("val_curve") or [{"fused_acc": float("nan")}]
    return float(curve[-1]["fused_acc"])


def run_family_evaluation(evaluation: FamilyEvaluationConfig, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) every case of every row; write ``family.json`` and ``table.md``; return the record."""
    base = family_config(evaluation.spec, evaluation.overrides)
    family = TaskFamily.from_config(base.task, base.task_kwargs, base.family)
    pool = list(family.pool(evaluation.instances))[: evaluation.n_instances]
    if not pool:
        raise ConfigError(f"the family has no '{evaluation.instances}' instances")
    M_of = {i: family.make(i).modalities for i in pool}
    B, n_min = base.learner.batch_size, base.env.n_min
    allocation = base.env.action_type == "allocation"
    heuristic = {"allocation": allocation, "n_min": n_min} if allocation else {}
    out = Path(evaluation.out_dir)
    cells_dir = out / "cells"
    seeds = list(evaluation.seeds)

    def cases(label: str, sampler: str, kwargs_of: Any, method: str | None = None) -> list[Cell]:
        return [_cell(label, i, s, case_config(base, family, i, s, sampler, kwargs_of(i, s), method))
                for i in pool for s in seeds]

    first: list[Cell] = cases("uniform", "uniform", lambda i, s: {})
    if evaluation.ogm_ge:
        first += cases("ogm-ge", "uniform", lambda i, s: {}, method="ogm-ge")
    if evaluation.policy is not None:
        first += cases("ppo", "ppo", lambda i, s: {"policy": str(Path(evaluation.policy).resolve())})
    if evaluation.blind_policy is not None:
        first += cases("ppo-blind", "ppo", lambda i, s: {"policy": str(Path(evaluation.blind_policy).resolve())})
    oracle_labels: dict[int, list[str]] = {}
    if evaluation.oracle:
        for i in pool:
            M = len(M_of[i])
            oracle_labels[i] = []
            for shares in ORACLE_SHARES[M]:
                counts = allocate(shares, M * B, n_min).tolist() if allocation else [round(M * B * x) for x in shares]
                label = "constant" + "-".join(str(n) for n in counts)
                oracle_labels[i].append(label)
                first += [_cell(label, i, s, case_config(base, family, i, s, "constant", {"counts": counts}))
                          for s in seeds]
    tune = list(family.train)[: evaluation.tune_instances]
    for alpha in evaluation.alpha_grid:
        first += [_cell(f"tune-alpha{alpha:g}", i, seeds[0],
                        case_config(base, family, i, seeds[0], "heuristic", {**heuristic, "alpha": alpha}))
                  for i in tune]
    records, ran, _ = execute_cells(first, cells_dir, evaluation.workers, progress, "family cases")
    tuned = {alpha: float(np.mean([_final_val(records[f"tune-alpha{alpha:g}/i{i}/seed{seeds[0]}"]) for i in tune]))
             for alpha in evaluation.alpha_grid}
    alpha = max(tuned, key=tuned.get)
    second = cases("heuristic", "heuristic", lambda i, s: {**heuristic, "alpha": alpha})
    if evaluation.policy is not None:
        stems = {(c.seed, int(c.task[1:])): c.file_stem for c in first if c.sampler == "ppo"}
        histories = {(i, s): np.load(cells_dir / f"{stems[(s, i)]}.npz")["counts"] for i in pool for s in seeds}
        source = {(i, s): (_replay_source(i, pool, M_of), seeds[(k + 1) % len(seeds)])
                  for i in pool for k, s in enumerate(seeds)}
        second += cases("ppo-replay", "schedule", lambda i, s: {"schedule": histories[source[(i, s)]].tolist()})
    more, ran_more, workers = execute_cells(second, cells_dir, evaluation.workers, progress, "family cases")
    records.update(more)
    record = summarise(records, pool, seeds, oracle_labels, family, M_of)
    record.update(alpha=alpha, alpha_scores=tuned, tune_instances=tune, spec=str(evaluation.spec),
                  instances=evaluation.instances, cells=len(first) + len(second), ran=ran + ran_more, workers=workers)
    record["table"] = format_family_table(record) + "\n\n" + format_family_aggregates(record)
    write_text_atomic(out / "family.json", json.dumps(record, indent=1))
    write_text_atomic(out / "table.md", record["table"] + "\n")
    return record


def _replay_source(instance: int, pool: list[int], modalities: dict[int, tuple[str, ...]]) -> int:
    """The next instance of the pool with as many modalities as ``instance`` (itself if it is the only one)."""
    same = [i for i in pool if len(modalities[i]) == len(modalities[instance])]
    return same[(same.index(instance) + 1) % len(same)]


def summarise(records: dict[str, dict[str, Any]], pool: list[int], seeds: list[int],
              oracle_labels: dict[int, list[str]], family: TaskFamily,
              modalities: dict[int, tuple[str, ...]]) -> dict[str, Any]:
    """Per row, the test accuracy, samples per iteration and epochs of every (instance, seed) case."""
    rows: dict[str, list[dict[str, Any]]] = {}
    labels = [lb for lb in ("uniform", "heuristic", "ogm-ge", "ppo", "ppo-replay", "ppo-blind")
              if f"{lb}/i{pool[0]}/seed{seeds[0]}" in records]
    chosen: dict[int, str] = {}
    for i in pool:
        if oracle_labels:
            chosen[i] = max(oracle_labels[i], key=lambda lb: np.mean(
                [_final_val(records[f"{lb}/i{i}/seed{s}"]) for s in seeds]))
        for s in seeds:
            for label in [*labels, *(["oracle"] if oracle_labels else [])]:
                key = f"{chosen[i] if label == 'oracle' else label}/i{i}/seed{s}"
                r = records[key]
                summary = r["summary"]
                case = {"instance": i, "seed": s, "M": len(modalities[i]), "diverged": bool(r.get("diverged")),
                        "params": family.instances[i]}
                if not r.get("diverged"):
                    case.update(acc=summary["test"]["fused"]["acc"], epochs=summary["epochs"],
                                samples=sum(summary["samples_seen"].values()) / summary["iterations"])
                if label == "oracle":
                    case["allocation"] = chosen[i]
                rows.setdefault(label, []).append(case)
    return {"rows": rows, "pool": pool, "seeds": seeds}


def _delta(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> str:
    pairs = [(x["acc"], y["acc"]) for x, y in zip(a, b, strict=True) if "acc" in x and "acc" in y]
    if len(pairs) < 2:
        return "—"
    return format_paired([p for p, _ in pairs], [q for _, q in pairs])


def format_family_table(record: dict[str, Any]) -> str:
    """Markdown: per row, mean ± std of the test accuracy over cases, paired differences, samples and epochs."""
    rows = record["rows"]
    head = ["sampler", "fused acc", "Δ vs uniform [95% CI]", "Δ vs heuristic [95% CI]", "ppo − row [95% CI]",
            "samples / iteration", "epochs", "cases"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, cases in rows.items():
        ok = [c for c in cases if "acc" in c]
        name = f"heuristic (alpha {record.get('alpha', 0):g})" if label == "heuristic" else label
        diverged = sum(c["diverged"] for c in cases)
        lines.append("| " + " | ".join([
            name, format_mean_std([c["acc"] for c in ok]) if ok else "—",
            "—" if label == "uniform" else _delta(cases, rows["uniform"]),
            "—" if label == "heuristic" or "heuristic" not in rows else _delta(cases, rows["heuristic"]),
            "—" if label == "ppo" or "ppo" not in rows else _delta(rows["ppo"], cases),
            f"{np.mean([c['samples'] for c in ok]):.1f}" if ok else "—",
            f"{np.mean([c['epochs'] for c in ok]):.1f}" if ok else "—",
            f"{len(ok)}" + (f" (+{diverged} diverged)" if diverged else ""),
        ]) + " |")
    return "\n".join(lines)


def format_family_aggregates(record: dict[str, Any]) -> str:
    """Markdown: per row, the IQM of the test accuracy and the probability of improvement over uniform.

    The IQM is over every (seed, instance) case, its interval a bootstrap of the seeds within each instance;
    the probability of improvement is rliable's (per instance, averaged over instances).
    """
    rows, pool, seeds = record["rows"], record["pool"], record["seeds"]
    scores = {}
    for label, cases in rows.items():
        acc = {(c["instance"], c["seed"]): c.get("acc") for c in cases}
        if all(acc[(i, s)] is not None for i in pool for s in seeds):  # a diverged case: no aggregate for the row
            scores[label] = np.array([[acc[(i, s)] for i in pool] for s in seeds])
    aggregates = aggregate_scores(scores, reference="uniform")
    return (f"Interquartile mean over the {len(seeds)} seeds x {len(pool)} instances (stratified bootstrap: seeds "
            "resampled within each instance) and the probability of improvement over uniform:\n\n"
            + format_aggregates(aggregates))
