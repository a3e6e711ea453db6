"""Several samplers over several seeds on one task: a table with paired differences to uniform and to the heuristic."""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from dus_gym.core.config import ConfigError, RunConfig, check_seeds, check_workers, to_dict
from dus_gym.error import DivergedError
from dus_gym.experiments.cells import Cell, execute_cells, load_histories
from dus_gym.experiments.results import table_header, table_row, write_results
from dus_gym.experiments.stats import (
    aggregate_scores,
    format_aggregates,
    format_mean_std,
    format_paired,
    late_fusion_accuracy,
)
from dus_gym.tasks import make_task

REFERENCES = ("uniform", "heuristic")
"""The samplers every other row is compared with, seed by seed (when they are among the samplers)."""


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler to compare: its table label, registered name and keyword arguments."""

    label: str
    name: str
    kwargs: dict[str, Any]


def check_controls(labels: list[str], seeds: list[int], controls: bool) -> None:
    """Refuse the policy controls where they cannot be formed (one line, before any run).

    ``ppo-mean`` and ``ppo-replay`` are built from the ``ppo`` sampler's runs, and ``ppo-replay``
    replays on seed i the schedule chosen on another seed: with a single seed it would replay the
    policy's own schedule on the same seed.
    """
    if not controls:
        return
    if "ppo" not in labels:
        raise ConfigError("the controls (ppo-mean, ppo-replay) are formed from the ppo sampler's runs: add ppo to "
                          "the samplers (with --policy) or drop --controls")
    if len(seeds) < 2:
        raise ConfigError("ppo-replay replays on each seed the schedule the policy chose on another seed: give at "
                          "least two seeds, or drop the controls")


DEFAULT_GRID = ((16, 128), (32, 128), (64, 128), (32, 96), (128, 64), (128, 32))
"""Constant counts (two modalities) tried by ``grid=True``; the best by validation accuracy is kept."""


def run_comparison(
    base: RunConfig,
    samplers: list[SamplerSpec],
    seeds: list[int],
    out_dir: Path | None,
    alone: bool = True,
    controls: bool = False,
    grid: bool = False,
    progress: bool = True,
    workers: int | None = 1,
) -> dict[str, Any]:
    """Run every sampler (and, with ``alone``, every modality trained alone) on every seed.

    With ``controls`` and a sampler labelled ``ppo`` (docs/protocol.md): ``ppo-mean`` (constant counts at
    the policy's mean counts over all seeds) and ``ppo-replay`` (the count schedule the policy chose
    on seed i+1, replayed open-loop on seed i). With ``grid``: ``best-constant``, the constant counts
    of :data:`DEFAULT_GRID` with the best mean validation accuracy (each cell is also a row).

    Every run is a cell (:mod:`dus_gym.experiments.cells`) with its own folder ``out_dir/LABEL/seedS``
    (config, results, TensorBoard); ``workers`` processes run them (1: in this process, one after
    the other; None: the CPU count). Returns the JSON-serialisable record that is also written to
    ``out_dir/compare.json``.
    """
    check_seeds(seeds)
    check_controls([spec.label for spec in samplers], list(seeds), controls)
    check_workers(workers)
    task = make_task(base.task, **base.task_kwargs)
    M, B = len(task.modalities), base.learner.batch_size
    if grid and M != 2:  # before any run
        raise ValueError(f"the constant-count grid is defined for 2 modalities, this task has {M}")
    with contextlib.ExitStack() as stack:
        folder = Path(out_dir) if out_dir is not None else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        runs, histories = _Rows(base, task.name, seeds, folder, out_dir is not None, workers, progress).run_stages(
            samplers, controls, grid, alone, task.modalities, B)
    late: list[float] = []
    if alone:
        for i in range(len(seeds)):
            alone_runs = [histories[f"alone:{m}"][i] for m in task.modalities]
            late.append(late_fusion_accuracy([h["probabilities"] for h in alone_runs], alone_runs[0]["labels"]))
    record = {"task": task.name, "modalities": list(task.modalities), "seeds": list(seeds), "runs": runs,
              "late_fusion_acc": late}
    record["table"] = format_table(record)
    aggregates = aggregate_table(record)
    record["aggregates"], record["table"] = aggregates[0], record["table"] + "\n\n" + aggregates[1]
    if out_dir is not None:
        write_results(out_dir, "compare", record)
    return record


class _Rows:
    """The rows of one comparison, run stage by stage as cells (the controls need the policy's counts first)."""

    def __init__(self, base: RunConfig, task: str, seeds: list[int], folder: Path, run_folders: bool,
                 workers: int | None, progress: bool) -> None:
        self.base, self.task, self.seeds, self.folder = base, task, seeds, folder
        self.run_folders, self.workers, self.progress = run_folders, workers, progress
        self.runs: dict[str, list[dict[str, Any]]] = {}
        self.histories: dict[str, list[dict[str, np.ndarray]]] = {}

    def cells(self, label: str, name: str, kwargs_of_seed: Any, alone: str | None = None) -> list[Cell]:
        """One cell per seed of row ``label`` (sampler ``name``; kwargs, or a function of the seed's index)."""
        out = []
        for i, seed in enumerate(self.seeds):
            kwargs = kwargs_of_seed(i) if callable(kwargs_of_seed) else kwargs_of_seed
            config = replace(self.base, sampler=name, sampler_kwargs=kwargs, seed=seed)
            run_dir = self.folder / label.replace(":", "-") / f"seed{seed}"
            out.append(Cell(f"{label}/seed{seed}", self.task, config.learner.method, label, seed, to_dict(config),
                            alone=alone, run_dir=str(run_dir) if self.run_folders else None, probe=True))
        return out

    def execute(self, cells: list[Cell]) -> dict[str, dict[str, Any]]:
        """Run ``cells`` (those without a finished record), ``workers`` at a time; their records by key."""
        return execute_cells(cells, self.folder / "cells", self.workers, self.progress, "compare runs")[0]

    def collect(self, cells: list[Cell], records: dict[str, dict[str, Any]]) -> None:
        """Keep the summaries and histories of ``cells`` as rows, in this order; a diverged run stops the comparison."""
        for cell in cells:
            record = records[cell.key]
            if record["diverged"]:
                raise DivergedError(f"{cell.key}: {record['diverged']}")
            self.runs.setdefault(cell.sampler, []).append(dict(record["summary"], label=cell.sampler))
            self.histories.setdefault(cell.sampler, []).append(load_histories(cell, self.folder / "cells"))

    def run_stages(self, samplers: list[SamplerSpec], controls: bool, grid: bool, alone: bool,
                   modalities: tuple[str, ...], B: int) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
        """Every row: the samplers, grid and modalities alone at once; then the controls, from the policy's counts.

        The rows keep their order: the samplers, the controls, the grid (and its best), the modalities alone.
        """
        M = len(modalities)
        sampler_cells = [cell for spec in samplers for cell in self.cells(spec.label, spec.name, spec.kwargs)]
        grid_labels = [f"constant{list(counts)}".replace(" ", "") for counts in DEFAULT_GRID] if grid else []
        grid_cells = [cell for label, counts in zip(grid_labels, DEFAULT_GRID, strict=False)
                      for cell in self.cells(label, "constant", {"counts": list(counts)})]
        alone_counts = {m: [B if j == k else 0 for j in range(M)] for k, m in enumerate(modalities)} if alone else {}
        alone_cells = [cell for m, counts in alone_counts.items()
                       for cell in self.cells(f"alone:{m}", "constant", {"counts": counts}, alone=m)]
        records = self.execute(sampler_cells + grid_cells + alone_cells)
        self.collect(sampler_cells, records)
        if controls:
            policy_counts = [h["counts"] for h in self.histories["ppo"]]
            mean_counts = np.rint(np.mean([c.mean(0) for c in policy_counts], axis=0)).astype(int).tolist()
            control_cells = (self.cells("ppo-mean", "constant", {"counts": mean_counts})
                             + self.cells("ppo-replay", "schedule",
                                          lambda i: {"schedule": policy_counts[(i + 1) % len(self.seeds)].tolist()}))
            self.collect(control_cells, self.execute(control_cells))
        self.collect(grid_cells, records)
        if grid:
            best = max(grid_labels, key=lambda c: np.mean([r["val_curve"][-1]["fused_acc"] for r in self.runs[c]]))
            self.runs["best-constant"] = [dict(r, label="best-constant", best_of_grid=best) for r in self.runs[best]]
        self.collect(alone_cells, records)
        return self.runs, self.histories


def aggregate_table(record: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The IQM and the probability of improvement over uniform of the fused test accuracy, over the seeds.

    Returns the aggregates (JSON-serialisable) and their markdown table, with a line saying what they are.
    """
    scores = {label: [r["test"]["fused"]["acc"] for r in rs] for label, rs in record["runs"].items()
              if not label.startswith("alone:")}
    aggregates = aggregate_scores(scores, reference=REFERENCES[0])
    text = (f"Interquartile mean over the {len(record['seeds'])} seeds with its stratified-bootstrap 95 % interval, "
            f"and the probability that a run of the sampler beats a run of {REFERENCES[0]} (unpaired, beside the "
            "paired intervals above; dus_gym.experiments.stats.aggregate_scores):\n\n"
            + format_aggregates(aggregates, REFERENCES[0]))
    return {name: asdict(a) for name, a in aggregates.items()}, text


def format_table(record: dict[str, Any]) -> str:
    """A markdown table: mean ± std over seeds, paired differences with their 95 % CI, and each row's cost.

    The differences are to uniform and to the heuristic (same seeds) and, with a ``ppo`` row, ppo minus
    every other row (a labelled policy such as a specialist, or a control); the cost is samples seen per
    modality, epochs, optimiser steps, FLOPs per iteration and wall time per run.
    """
    modalities = record["modalities"]
    runs = record["runs"]
    policy = runs.get("ppo")
    head = (["sampler", "fused acc"] + [f"acc {m}" for m in modalities] + [f"probe {m}" for m in modalities]
            + [f"Shapley {m}" for m in modalities]
            + [f"Δ fused vs {ref} [95% CI]" for ref in REFERENCES] + (["ppo − row [95% CI]"] if policy else [])
            + ["final abs(CMD)", "iterations"]
            + [f"samples {m}" for m in modalities] + ["epochs", "steps", "MFLOP/iter", "wall s"])
    lines = table_header(head)
    for label, rs in runs.items():
        alone_of = label.split(":", 1)[1] if label.startswith("alone:") else None
        fused = [r["test"]["fused"]["acc"] for r in rs]
        if label == "best-constant":
            label = f"best-constant = {rs[0]['best_of_grid']}"
        row = [label, "—" if alone_of else format_mean_std(fused)]
        for m in modalities:
            row.append(format_mean_std([r["test"][m]["acc"] for r in rs]) if alone_of in (None, m) else "—")
        for m in modalities:
            row.append(format_mean_std([r["probe_acc"][m] for r in rs]) if alone_of in (None, m) else "—")
        for m in modalities:
            shapley = [r["shapley"][m] for r in rs if r.get("shapley")]
            row.append(format_mean_std(shapley) if shapley and alone_of is None else "—")
        for ref in REFERENCES:
            reference = runs.get(ref)
            if reference is not None and alone_of is None and label != ref and len(reference) == len(rs):
                row.append(format_paired(fused, [r["test"]["fused"]["acc"] for r in reference]))
            else:
                row.append("—")
        if policy:
            if alone_of is None and label != "ppo" and len(policy) == len(rs):
                row.append(format_paired([r["test"]["fused"]["acc"] for r in policy], fused))
            else:
                row.append("—")
        row.append("—" if alone_of else format_mean_std([r["final_gap"] for r in rs], scale=1.0, digits=3))
        row.append(f"{int(np.mean([r['iterations'] for r in rs]))}")
        for m in modalities:
            row.append(f"{np.mean([r['samples_seen'][m] for r in rs]):.0f}")
        row.append(f"{np.mean([r['epochs'] for r in rs]):.1f}")
        steps = [r["optimizer_steps"] for r in rs if "optimizer_steps" in r]
        row.append(f"{np.mean(steps):.0f}" if steps else "—")
        flops = [r["flops_per_iteration"] for r in rs if r.get("flops_per_iteration") is not None]
        row.append(f"{np.mean(flops) / 1e6:.2f}" if flops else "—")
        row.append(f"{np.mean([r['train_seconds'] for r in rs]):.1f}")
        lines.append(table_row(row))
    if record.get("late_fusion_acc"):
        lines.append("| late fusion (alone models) | " + format_mean_std(record["late_fusion_acc"]) + " |"
                     + " — |" * (len(head) - 2))
    return "\n".join(lines)
