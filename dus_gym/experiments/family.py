"""Samplers on a task family's held-out instances: does a policy read the CMD state? (docs/protocol.md).

Every row runs on the same (instance, seed) cases, at the family spec's budget in learner
iterations and at exactly M x B samples per iteration (allocation or strength action); every
difference is paired case by case and its interval takes the **instance** as the unit
(per-instance means over seeds, a t interval with df = instances - 1). The rows:

- ``uniform``: B samples of every modality (plain joint training);
- ``heuristic-<source>``: the DUS heuristic reading its discrepancy from ``train`` (the training
  batches), ``val`` (validation statuses) or ``probe`` (a slice held out of the training split), each
  with the alpha that scored best on *training* instances; the best (source, alpha) of that tuning is
  *the* heuristic the other rows are compared with. The tuning's budget in learner runs is reported
  beside the policy's training episodes;
- ``heuristic-reversed``: the best heuristic with its sign flipped (the modality ahead gets more): does
  the direction of the CMD matter?
- ``oracle``: per instance, the best constant allocation of a grid (:func:`oracle_shares`), chosen
  on the validation accuracy of the first seed (knowledge a policy does not get);
- ``ogm-ge``: OGM-GE (the gradient method) with uniform sampling;
- ``ppo``: the trained policies (one row per training seed, ``ppo#k``, and ``ppo``, their mean per case);
- controls of each policy: ``ppo-replay`` (its counts on the *same instance* with another seed,
  replayed open-loop: does it react within a run?), ``ppo-replay-other`` (its counts on another
  instance with as many modalities), ``ppo-commit@k`` (it acts for the first k steps, then holds its
  last allocation: identify, then commit);
- ablations trained with the same recipe: ``ppo-no-cmd`` (c, d, relative d, s hidden) and
  ``ppo-no-val`` (validation features hidden); ``equivariant-blind``, a policy that saw no feature but
  the progress, which a modality-agnostic network must turn into uniform sampling (a structural
  fact, not evidence).

Cells run in parallel and are resumable, as the bench's (:func:`dus_gym.experiments.cells.execute_cells`).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dus_gym.core.config import ConfigError, RunConfig, check_workers, from_dict, to_dict
from dus_gym.core.files import read_yaml
from dus_gym.core.specs import deep_merge
from dus_gym.envs.registration import spec_path
from dus_gym.experiments.cells import Cell, execute_cells
from dus_gym.experiments.results import table_header, table_row, write_results
from dus_gym.experiments.stats import (
    format_aggregates,
    format_clustered,
    format_mean_std,
    two_level_aggregates,
)
from dus_gym.samplers.action import allocate
from dus_gym.tasks.families import TaskFamily

POLICY_ROWS = ("ppo", "ppo-replay", "ppo-replay-other", "ppo-no-cmd", "ppo-no-val")
"""Rows formed per policy training seed (``label#k``) and pooled (``label``: the mean over seeds per case)."""
MIN_NORMALISER = 0.05
"""The normalised score divides by max(oracle - uniform, this): on an instance where no allocation beats uniform by
5 points, a loss of 5 points is a score of -1 (the scores are read through their IQM, which is robust to the rest)."""


def oracle_shares(n_modalities: int) -> list[tuple[float, ...]]:
    """The constant allocations the oracle chooses among, as shares of the M x B samples.

    Uniform, and for every slot a share s of the samples with the others splitting the rest evenly:
    s in 0.1, 0.2, ..., 0.9 for two modalities (9 allocations), s in 0.1, 0.2, 0.6, 0.8 for more.
    """
    M = n_modalities
    levels = (0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9) if M == 2 else (0.1, 0.2, 0.6, 0.8)
    shares = {tuple([round(1 / M, 6)] * M)}
    for k, s in itertools.product(range(M), levels):
        shares.add(tuple(round(s if j == k else (1 - s) / (M - 1), 6) for j in range(M)))
    return sorted(shares, reverse=True)


@dataclass(frozen=True)
class FamilyEvaluationConfig:
    """What the family evaluation runs.

    Args:
        spec: the family's spec file (a path, or the name of a shipped spec in envs/).
        instances: the pool the cases come from: "held-out" (default), "train" or "all".
        n_instances: the first this many instances of the pool (None: all).
        seeds: learner seeds of every case.
        policies: policy folders, one per training seed of one recipe (rows ppo#k and ppo).
        no_cmd_policies: policies trained with the CMD features hidden (env hide: [cmd]).
        no_val_policies: policies trained with the validation features hidden (env hide: [val]).
        blind_policy: a policy trained blind (the equivariant-blind row; uniform by construction).
        controls: add each policy's replays and commit rows.
        commit_steps: the k of the ppo-commit@k rows.
        alpha_grid: the heuristic's alphas tried on training instances.
        sources: the heuristic's discrepancy sources tried ("train", "val", "probe").
        tune_instances: how many training instances the heuristic is tuned on.
        tune_seeds: the seeds of every tuning instance.
        heuristic_from: the ``family.json`` of an evaluation whose tuned heuristic to use instead of tuning here
            (an out-of-distribution family has no training instances to tune on).
        probe_size: the probe slice of the "probe" source (samples of the training split).
        reversed_heuristic: add the best heuristic with its sign flipped.
        oracle: add the per-instance best constant allocation.
        ogm_ge: add OGM-GE with uniform sampling.
        workers: parallel processes (None: the CPU count).
        out_dir: where cells, the record and the tables go.
        overrides: run-config keys applied to every case.
    """

    spec: str = "synthetic-family-v1.yaml"
    instances: str = "held-out"
    n_instances: int | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    policies: tuple[str, ...] = ()
    no_cmd_policies: tuple[str, ...] = ()
    no_val_policies: tuple[str, ...] = ()
    blind_policy: str | None = None
    controls: bool = True
    commit_steps: tuple[int, ...] = (1, 3)
    alpha_grid: tuple[float, ...] = (3.0, 10.0, 30.0, 60.0, 100.0)
    sources: tuple[str, ...] = ("train", "val", "probe")
    tune_instances: int = 16
    tune_seeds: tuple[int, ...] = (0, 1)
    heuristic_from: str | None = None
    probe_size: int = 100
    reversed_heuristic: bool = True
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
        check_workers(self.workers)
        if self.blind_policy is not None:
            check_blind_policy(self.blind_policy)
        if len(set(self.seeds)) != len(self.seeds) or not self.seeds:
            raise ConfigError(f"seeds must be distinct and at least one, got {list(self.seeds)}")
        if self.n_instances is not None and self.n_instances < 1:
            raise ConfigError(f"n_instances must be >= 1 (or omitted for all), got {self.n_instances}")
        if (self.no_cmd_policies or self.no_val_policies or self.blind_policy) and not self.policies:
            raise ConfigError("the ablations are controls of a policy: give --policy too")
        if self.policies and self.controls and len(self.seeds) < 2:
            raise ConfigError("ppo-replay replays another seed's counts: give at least two seeds (or no controls)")
        if not self.alpha_grid or self.tune_instances < 1 or not self.tune_seeds or not self.sources:
            raise ConfigError("the heuristic needs alphas, sources, and at least one training instance and seed to "
                              "be tuned on")
        if set(self.sources) - {"train", "val", "probe"} or len(set(self.sources)) != len(self.sources):
            raise ConfigError(f"sources must be distinct among train, val and probe, got {list(self.sources)}")
        if any(k < 1 for k in self.commit_steps):
            raise ConfigError(f"commit_steps must be >= 1, got {list(self.commit_steps)}")

    @property
    def tuning_runs(self) -> int:
        """The heuristic's tuning budget in learner runs (0 when it comes from another evaluation)."""
        if self.heuristic_from is not None:
            return 0
        return len(self.alpha_grid) * len(self.sources) * self.tune_instances * len(self.tune_seeds)


def read_tuning(path: str | Path) -> dict[str, Any]:
    """The tuned heuristic of an earlier evaluation's ``family.json``: its scores, best alphas and best source."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
        tuned = {key: record[key] for key in ("tuning", "best_alpha", "heuristic", "tune_instances", "tune_seeds",
                                              "tuning_runs", "spec")}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"--heuristic-from {path}: not the family.json of a family evaluation ({err})") from err
    return tuned


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
                sampler_kwargs: dict[str, Any], method: str | None = None,
                cmd: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run config of one case: the instance's task kwargs, the sampler, the seed; no TensorBoard, no family.

    FLOPs are not counted (the family tables show samples and epochs; counting doubles a small run's time).
    """
    data = to_dict(base)
    data.update(task_kwargs=family.task_kwargs(instance), family=None, sampler=sampler, sampler_kwargs=sampler_kwargs,
                seed=seed, tensorboard=False, flops_every=None)
    if method is not None:
        data["learner"] = dict(data["learner"], method=method, method_kwargs={})
    if cmd is not None:
        data["cmd"] = dict(data["cmd"], **cmd)
    return to_dict(from_dict(RunConfig, data))


def _cell(label: str, instance: int, seed: int, config: dict[str, Any]) -> Cell:
    return Cell(f"{label}/i{instance}/seed{seed}", f"i{instance}", config["learner"]["method"], label, seed, config)


def _final_val(record: dict[str, Any]) -> float:
    curve = record["summary"].get("val_curve") or [{"fused_acc": float("nan")}]
    return float(curve[-1]["fused_acc"])


class _Plan:
    """The cells of one evaluation, by row label, and the settings every case shares."""

    def __init__(self, evaluation: FamilyEvaluationConfig) -> None:
        self.evaluation = evaluation
        self.base = family_config(evaluation.spec, evaluation.overrides)
        base = self.base
        self.family = TaskFamily.from_config(base.task, base.task_kwargs, base.family)
        self.pool = list(self.family.pool(evaluation.instances))[: evaluation.n_instances]
        if not self.pool:
            raise ConfigError(f"the family has no '{evaluation.instances}' instances")
        self.modalities = {i: self.family.make(i).modalities for i in self.pool}
        self.seeds = list(evaluation.seeds)
        self.B, self.n_min = base.learner.batch_size, base.env.n_min
        self.allocation = base.env.action_type in ("allocation", "strength")
        self.cells_dir = Path(evaluation.out_dir) / "cells"

    def heuristic(self, source: str, alpha: float, reverse: bool = False) -> tuple[dict[str, Any], dict | None]:
        """The heuristic's sampler kwargs and cmd override for a source."""
        kwargs: dict[str, Any] = {"alpha": alpha, **({"allocation": True, "n_min": self.n_min} if self.allocation
                                                     else {})}
        if source == "val":
            kwargs.update(source="val", val_every=self.base.env.iterations_per_step)
        if reverse:
            kwargs["reverse"] = True
        cmd = {"source": "probe", "probe_size": self.evaluation.probe_size} if source == "probe" else None
        return kwargs, cmd

    def cases(self, label: str, sampler: str, kwargs_of: Callable[[int, int], dict[str, Any]],
              method: str | None = None, cmd: dict[str, Any] | None = None,
              seeds: list[int] | None = None) -> list[Cell]:
        """One cell per (instance, seed) of the pool."""
        return [_cell(label, i, s, case_config(self.base, self.family, i, s, sampler, kwargs_of(i, s), method, cmd))
                for i in self.pool for s in (seeds or self.seeds)]

    def constant(self, instance: int, shares: tuple[float, ...]) -> tuple[str, list[int]]:
        """The label and counts of a constant allocation of M x B samples (after n_min)."""
        M = len(shares)
        counts = (allocate(shares, M * self.B, self.n_min).tolist() if self.allocation
                  else [round(M * self.B * x) for x in shares])
        return "constant-" + "-".join(str(n) for n in counts), counts


def run_family_evaluation(evaluation: FamilyEvaluationConfig, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) every case of every row; write ``family.json`` and ``table.md``; return the record."""
    plan = _Plan(evaluation)
    seeds, pool, cells_dir = plan.seeds, plan.pool, plan.cells_dir

    def run(cells: list[Cell]) -> tuple[dict[str, dict[str, Any]], int, int]:
        return execute_cells(cells, cells_dir, evaluation.workers, progress, "family cases")

    # stage 1: what needs no other result
    first: list[Cell] = plan.cases("uniform", "uniform", lambda i, s: {})
    if evaluation.ogm_ge:
        first += plan.cases("ogm-ge", "uniform", lambda i, s: {}, method="ogm-ge")
    policy_labels: dict[str, list[str]] = {}  # pooled label -> per-seed labels

    def add_policies(label: str, folders: tuple[str, ...], **extra: Any) -> None:
        nonlocal first
        for k, folder in enumerate(folders):
            per_seed = f"{label}#{k}"
            policy_labels.setdefault(label, []).append(per_seed)
            path = str(Path(folder).resolve())
            first += plan.cases(per_seed, "ppo", lambda i, s, p=path: {"policy": p, **extra})

    add_policies("ppo", evaluation.policies)
    if evaluation.controls:
        for k in evaluation.commit_steps:
            add_policies(f"ppo-commit@{k}", evaluation.policies, commit_after=k)
    add_policies("ppo-no-cmd", evaluation.no_cmd_policies)
    add_policies("ppo-no-val", evaluation.no_val_policies)
    if evaluation.blind_policy is not None:
        first += plan.cases("equivariant-blind", "ppo",
                            lambda i, s: {"policy": str(Path(evaluation.blind_policy).resolve())})
    grid: dict[int, list[str]] = {}
    if evaluation.oracle:
        for i in pool:
            grid[i] = []
            for shares in oracle_shares(len(plan.modalities[i])):
                label, counts = plan.constant(i, shares)
                grid[i].append(label)
                first.append(_cell(label, i, seeds[0], case_config(plan.base, plan.family, i, seeds[0], "constant",
                                                                   {"counts": counts})))
    reused = read_tuning(evaluation.heuristic_from) if evaluation.heuristic_from is not None else None
    tune = list(plan.family.train)[: evaluation.tune_instances] if reused is None else reused["tune_instances"]
    if reused is None:
        if not tune:
            raise ConfigError("the family has no training instances to tune the heuristic on: give --heuristic-from")
        for source, alpha in itertools.product(evaluation.sources, evaluation.alpha_grid):
            kwargs, cmd = plan.heuristic(source, alpha)
            first += [_cell(f"tune-{source}-alpha{alpha:g}", i, s,
                            case_config(plan.base, plan.family, i, s, "heuristic", kwargs, cmd=cmd))
                      for i in tune for s in evaluation.tune_seeds]
    records, ran, _ = run(first)

    # stage 2: the tuned heuristics, the oracle's choice on the other seeds, the replays
    if reused is None:
        scores = {f"{source}/{alpha:g}": float(np.mean([
            _final_val(records[f"tune-{source}-alpha{alpha:g}/i{i}/seed{s}"]) for i in tune
            for s in evaluation.tune_seeds])) for source, alpha in itertools.product(evaluation.sources,
                                                                                      evaluation.alpha_grid)}
        best_alpha = {source: max(evaluation.alpha_grid, key=lambda a, src=source: scores[f"{src}/{a:g}"])
                      for source in evaluation.sources}
        best_source = max(evaluation.sources, key=lambda src: scores[f"{src}/{best_alpha[src]:g}"])
        tune_seeds, tuning_runs, tuned_on = list(evaluation.tune_seeds), evaluation.tuning_runs, str(evaluation.spec)
    else:
        scores, best_alpha = reused["tuning"], {k: float(v) for k, v in reused["best_alpha"].items()}
        best_source = reused["heuristic"].split("-", 1)[1]
        tune_seeds, tuning_runs, tuned_on = reused["tune_seeds"], reused["tuning_runs"], reused["spec"]
    sources = [src for src in evaluation.sources if src in best_alpha]
    if best_source not in sources:
        sources.append(best_source)
    second: list[Cell] = []
    for source in sources:
        kwargs, cmd = plan.heuristic(source, best_alpha[source])
        second += plan.cases(f"heuristic-{source}", "heuristic", lambda i, s, kw=kwargs: kw, cmd=cmd)
    if evaluation.reversed_heuristic:
        kwargs, cmd = plan.heuristic(best_source, best_alpha[best_source], reverse=True)
        second += plan.cases("heuristic-reversed", "heuristic", lambda i, s: kwargs, cmd=cmd)
    chosen: dict[int, str] = {}
    for i in grid:
        chosen[i] = max(grid[i], key=lambda lb, i=i: _final_val(records[f"{lb}/i{i}/seed{seeds[0]}"]))
        counts = records[f"{chosen[i]}/i{i}/seed{seeds[0]}"]["config"]["sampler_kwargs"]["counts"]
        second += [_cell(chosen[i], i, s, case_config(plan.base, plan.family, i, s, "constant", {"counts": counts}))
                   for s in seeds[1:]]
    if evaluation.policies and evaluation.controls:
        for k, label in enumerate(policy_labels["ppo"]):
            stems = {(c.seed, int(c.task[1:])): c.file_stem for c in first if c.sampler == label}
            history = {(i, s): np.load(cells_dir / f"{stems[(s, i)]}.npz")["counts"].tolist()
                       for i in pool for s in seeds}
            after = {s: seeds[(n + 1) % len(seeds)] for n, s in enumerate(seeds)}
            for name, source_of in (("ppo-replay", lambda i: i),
                                    ("ppo-replay-other", lambda i: _replay_source(i, pool, plan.modalities))):
                per_seed = f"{name}#{k}"
                policy_labels.setdefault(name, []).append(per_seed)
                second += plan.cases(per_seed, "schedule", lambda i, s, f=source_of, h=history, a=after:
                                     {"schedule": h[(f(i), a[s])]})
    more, ran_more, workers = run(second)
    records.update(more)

    rows = summarise(records, plan, chosen, policy_labels)
    record: dict[str, Any] = {
        "rows": rows, "pool": pool, "seeds": seeds, "spec": str(evaluation.spec), "instances": evaluation.instances,
        "heuristic": f"heuristic-{best_source}", "alpha": best_alpha[best_source], "best_alpha": best_alpha,
        "tuning": scores, "tune_instances": tune, "tune_seeds": tune_seeds, "tuning_runs": tuning_runs,
        "tuned_on": tuned_on,
        "policies": [str(p) for p in evaluation.policies], "oracle_choice": {str(i): c for i, c in chosen.items()},
        "cells": len(first) + len(second), "ran": ran + ran_more, "workers": workers,
    }
    record["table"] = format_family_report(record)
    out = Path(evaluation.out_dir)
    write_results(out, "family", record, indent=1)
    return record


def _replay_source(instance: int, pool: list[int], modalities: dict[int, tuple[str, ...]]) -> int:
    """The next instance of the pool with as many modalities as ``instance`` (itself if it is the only one)."""
    same = [i for i in pool if len(modalities[i]) == len(modalities[instance])]
    return same[(same.index(instance) + 1) % len(same)]


def summarise(records: dict[str, dict[str, Any]], plan: _Plan, chosen: dict[int, str],
              policy_labels: dict[str, list[str]]) -> dict[str, list[dict[str, Any]]]:
    """Per row, the test accuracy, samples per iteration and epochs of every (instance, seed) case.

    Per-seed policy rows (``ppo#k``) are kept; the pooled row (``ppo``) holds per case the mean over the
    policy seeds whose run did not diverge.
    """
    present = {key.split("/", 1)[0] for key in records}
    order = ["uniform", "heuristic-train", "heuristic-val", "heuristic-probe", "heuristic-reversed", "ogm-ge"]
    labels = [lb for lb in order if lb in present]
    labels += [lb for pooled in policy_labels.values() for lb in pooled]
    labels += ["equivariant-blind"] if "equivariant-blind" in present else []
    rows: dict[str, list[dict[str, Any]]] = {}
    for label in [*labels, *(["oracle"] if chosen else [])]:
        for i in plan.pool:
            for s in plan.seeds:
                r = records[f"{chosen[i] if label == 'oracle' else label}/i{i}/seed{s}"]
                summary = r["summary"]
                case = {"instance": i, "seed": s, "M": len(plan.modalities[i]), "diverged": bool(r.get("diverged")),
                        "params": plan.family.instances[i]}
                if not r.get("diverged"):
                    case.update(acc=summary["test"]["fused"]["acc"], epochs=summary["epochs"],
                                samples=sum(summary["samples_seen"].values()) / summary["iterations"])
                if label == "oracle":
                    case["allocation"] = chosen[i]
                rows.setdefault(label, []).append(case)
    for pooled, per_seed in policy_labels.items():
        cases = []
        for n, base_case in enumerate(rows[per_seed[0]]):
            done = [rows[lb][n] for lb in per_seed if "acc" in rows[lb][n]]
            case = {k: base_case[k] for k in ("instance", "seed", "M", "params")}
            case["diverged"] = len(done) < len(per_seed)
            if done:
                case.update({k: float(np.mean([c[k] for c in done])) for k in ("acc", "epochs", "samples")})
            cases.append(case)
        rows[pooled] = cases
    return rows


def _by_instance(cases: list[dict[str, Any]], key: str = "acc") -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for c in cases:
        if key in c:
            out.setdefault(c["instance"], []).append(c[key])
    return out


def _harmful(params: dict[str, Any]) -> bool | None:
    """Whether an instance's imbalance is harmful (the synthetic family: no fine signal in the dominant modality)."""
    return None if "dominant_fine_signal" not in params else params["dominant_fine_signal"] == 0


def subgroups(record: dict[str, Any]) -> dict[str, list[int]]:
    """The instances of each subgroup: harmful / harmless imbalance (where known), and by number of modalities."""
    first = {c["instance"]: c for c in record["rows"]["uniform"]}
    groups: dict[str, list[int]] = {}
    for i in record["pool"]:
        harmful = _harmful(first[i]["params"])
        if harmful is not None:
            groups.setdefault("harmful" if harmful else "harmless", []).append(i)
    for M in sorted({c["M"] for c in first.values()}):
        groups[f"M = {M}"] = [i for i in record["pool"] if first[i]["M"] == M]
    return groups


def normalised_scores(record: dict[str, Any], label: str) -> np.ndarray | None:
    """(seeds, instances) scores of a row normalised per instance: 0 = uniform, 1 = oracle (per-instance means).

    The denominator is max(oracle - uniform, :data:`MIN_NORMALISER`), so an instance where no constant
    beats uniform does not blow up. None when the row has a diverged case or there is no oracle.
    """
    rows, pool, seeds = record["rows"], record["pool"], record["seeds"]
    if "oracle" not in rows:
        return None
    uniform, oracle = _by_instance(rows["uniform"]), _by_instance(rows["oracle"])
    acc = {(c["instance"], c["seed"]): c.get("acc") for c in rows[label]}
    if any(acc[(i, s)] is None for i in pool for s in seeds) or any(len(oracle.get(i, [])) == 0 for i in pool):
        return None
    scale = {i: max(np.mean(oracle[i]) - np.mean(uniform[i]), MIN_NORMALISER) for i in pool}
    return np.array([[(acc[(i, s)] - np.mean(uniform[i])) / scale[i] for i in pool] for s in seeds])


def _name(record: dict[str, Any], label: str) -> str:
    if label.startswith("heuristic-") and label != "heuristic-reversed":
        source = label.split("-", 1)[1]
        return f"{label} (alpha {record['best_alpha'][source]:g})" + (" = heuristic" if label == record["heuristic"]
                                                                      else "")
    if label == "heuristic-reversed":
        return f"heuristic-reversed (alpha {record['alpha']:g})"
    return label


def main_rows(rows: dict[str, Any]) -> list[str]:
    """The rows of the main table, in reading order (the per-seed policy rows have their own table)."""
    order = ["uniform", "heuristic-train", "heuristic-val", "heuristic-probe", "heuristic-reversed", "oracle",
             "ogm-ge", "ppo", "ppo-replay", "ppo-replay-other"]
    order += sorted(lb for lb in rows if lb.startswith("ppo-commit@") and "#" not in lb)
    order += ["ppo-no-cmd", "ppo-no-val", "equivariant-blind"]
    return [lb for lb in order if lb in rows]


def format_family_table(record: dict[str, Any], labels: list[str] | None = None) -> str:
    """Markdown: per row, test accuracy, instance-clustered paired differences, samples per iteration, epochs.

    The accuracy is the mean ± std of the per-instance means.
    """
    rows = record["rows"]
    heuristic = record["heuristic"]
    head = ["sampler", "fused acc", "Δ vs uniform [95% CI]", "Δ vs heuristic [95% CI]", "ppo − row [95% CI]",
            "samples / iteration", "epochs", "cases"]
    lines = table_header(head)
    ppo = _by_instance(rows["ppo"]) if "ppo" in rows else None
    for label in labels or main_rows(rows):
        cases = rows[label]
        ok = [c for c in cases if "acc" in c]
        means = _by_instance(cases)
        diverged = sum(c["diverged"] for c in cases)
        lines.append(table_row([
            _name(record, label),
            format_mean_std([float(np.mean(v)) for v in means.values()]) if ok else "—",
            "—" if label == "uniform" else format_clustered(means, _by_instance(rows["uniform"])),
            "—" if label == heuristic else format_clustered(means, _by_instance(rows[heuristic])),
            "—" if ppo is None or label == "ppo" else format_clustered(ppo, means),
            f"{np.mean([c['samples'] for c in ok]):.1f}" if ok else "—",
            f"{np.mean([c['epochs'] for c in ok]):.1f}" if ok else "—",
            f"{len(ok)}" + (f" (+{diverged} diverged)" if diverged else ""),
        ]))
    return "\n".join(lines)


def format_subgroups(record: dict[str, Any]) -> str:
    """Markdown: per subgroup, the main rows' differences to uniform, the heuristic and the oracle."""
    rows, heuristic = record["rows"], record["heuristic"]
    main = [lb for lb in ("uniform", heuristic, "oracle", "ppo", "ppo-replay", "ppo-commit@1", "ppo-no-cmd",
                          "ppo-no-val") if lb in rows]
    references = [name for name in ("uniform", heuristic, "oracle") if name in rows]
    head = ["subgroup", "instances", "sampler", "fused acc",
            *(f"Δ vs {'heuristic' if name == heuristic else name} [95% CI]" for name in references)]
    lines = table_header(head)
    for group, members in subgroups(record).items():
        keep = set(members)
        for label in main:
            means = {i: v for i, v in _by_instance(rows[label]).items() if i in keep}
            ref = {name: {i: v for i, v in _by_instance(rows[name]).items() if i in keep} for name in references}
            lines.append(table_row([
                group, str(len(members)), _name(record, label),
                format_mean_std([float(np.mean(v)) for v in means.values()]) if means else "—",
                *("—" if name == label else format_clustered(means, ref[name]) for name in references),
            ]))
    return "\n".join(lines)


def format_policy_seeds(record: dict[str, Any]) -> str:
    """Markdown: each policy training seed against the heuristic, uniform, the oracle and its own controls."""
    rows, heuristic = record["rows"], record["heuristic"]
    seeds = sorted(lb for lb in rows if lb.startswith("ppo#"))
    if not seeds:
        return ""
    others = ["uniform", heuristic, *(["oracle"] if "oracle" in rows else [])]
    controls = [name for name in ("ppo-replay", "ppo-replay-other", "ppo-commit@1", "ppo-commit@3")
                if f"{name}#0" in rows]
    head = ["policy", "fused acc", *(f"ppo − {_name(record, o).split(' (')[0]}" for o in others),
            *(f"ppo − {c}" for c in controls)]
    lines = table_header(head)
    for label in seeds:
        k = label.split("#")[1]
        means = _by_instance(rows[label])
        cells = [format_clustered(means, _by_instance(rows[o])) for o in others]
        cells += [format_clustered(means, _by_instance(rows[f"{c}#{k}"])) for c in controls]
        lines.append(table_row([label, format_mean_std([float(np.mean(v)) for v in means.values()]),
                                        *cells]))
    return "\n".join(lines)


def format_family_aggregates(record: dict[str, Any]) -> str:
    """Markdown: per row, the IQM of per-instance normalised scores and the probability of improvement over uniform.

    Both with a two-level bootstrap (instances, then seeds within each).
    """
    scores = {}
    for label in main_rows(record["rows"]):
        norm = normalised_scores(record, label)
        if norm is not None:
            scores[label] = norm
    if "uniform" not in scores:
        return ""
    aggregates = two_level_aggregates(scores, reference="uniform")
    return format_aggregates(aggregates, what="normalised score", scale=1.0)


def format_tuning(record: dict[str, Any]) -> str:
    """Markdown: the heuristic's mean validation accuracy per (source, alpha) on the training instances."""
    tuning = record["tuning"]
    sources = list(dict.fromkeys(key.split("/")[0] for key in tuning))
    alphas = list(dict.fromkeys(key.split("/")[1] for key in tuning))
    lines = table_header(["source", *(f"alpha {a}" for a in alphas)])
    for source in sources:
        lines.append(table_row([source, *(f"{100 * tuning[f'{source}/{a}']:.1f}" for a in alphas)]))
    return "\n".join(lines)


def format_family_report(record: dict[str, Any]) -> str:
    """The whole report: the main table, the aggregates, the policy seeds, the subgroups and the tuning."""
    n, seeds = len(record["pool"]), record["seeds"]
    parts = [
        f"{n} {record['instances']} instances x seeds {seeds}; test accuracy in % (mean ± std of the per-instance "
        f"means); differences paired per case, 95 % t intervals with the instance as the unit (df = {n - 1}).",
        format_family_table(record),
    ]
    aggregates = format_family_aggregates(record)
    if aggregates:
        parts += ["Interquartile mean of the per-instance normalised scores (0 = uniform, 1 = oracle; the denominator "
                  f"is at least {100 * MIN_NORMALISER:g} points) and the probability of improvement over uniform, with "
                  "a two-level bootstrap (instances, then seeds within each):", aggregates]
    policy_seeds = format_policy_seeds(record)
    if policy_seeds:
        parts += ["Each policy training seed (differences in points, instance-clustered 95 % intervals):", policy_seeds]
    parts += ["Subgroups (harmful: the dominant modality cannot separate the classes alone; harmless: it can):",
              format_subgroups(record)]
    parts += [f"The heuristic's tuning on {record.get('tuned_on', record['spec'])}: mean validation accuracy (%) on "
              f"{len(record['tune_instances'])} training instances x seeds {record['tune_seeds']}, "
              f"{record['tuning_runs']} learner runs:", format_tuning(record)]
    return "\n\n".join(parts)


__all__ = ["FamilyEvaluationConfig", "case_config", "family_config", "oracle_shares", "run_family_evaluation"]
