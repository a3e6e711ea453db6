"""``dus-gym bench``: tasks x methods x samplers x seeds, in parallel, resumable; CSV, table and plots.

Every cell is one training run (:func:`dus_gym.experiments.run.run_training`) at the task spec's budget in
learner iterations, so every method and sampler gets the same number of learner iterations. Equal
iterations are not equal cost: the samplers draw different numbers of samples (and so run
different numbers of epochs), and MLA takes one optimiser step per modality per iteration, so
the table shows samples seen per modality, epochs, optimiser steps, FLOPs per iteration and wall
time beside the accuracy, and paired differences to uniform and to the heuristic. A finished cell is a JSON file
(plus an .npz of its count and CMD histories) written atomically under ``OUT/cells``; a rerun
with the same settings skips it, so an interrupted bench continues where it stopped. The
modalities trained alone (and their late fusion) are the reference rows of each task.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dus_gym.core.config import (
    ConfigError,
    RunConfig,
    check_distinct,
    check_seeds,
    check_workers,
    from_dict,
    to_dict,
)
from dus_gym.core.extras import require
from dus_gym.core.files import atomic_path, write_text_atomic
from dus_gym.core.methods import METHODS, check_method_fusion, make_method
from dus_gym.core.methods.presets import check_preset
from dus_gym.core.specs import deep_merge, resolve_run_config
from dus_gym.experiments import results as readme_block
from dus_gym.experiments.cells import Cell, execute_cells
from dus_gym.experiments.results import table_header, table_row
from dus_gym.experiments.stats import (
    format_difference,
    format_mean_std,
    late_fusion_accuracy,
    mean_interval,
    paired_difference,
)
from dus_gym.samplers import make_sampler, overrides_per_sampler
from dus_gym.tasks import cached_task

DEFAULT_METHODS = tuple(METHODS.names())  # every registered method
AXES = ("task", "sampler", "seed")
"""Run-config keys that are axes of the bench (set with --tasks, --samplers, --seeds), not overrides."""
README_BLOCK = "bench"
README_START, README_END = readme_block.readme_markers(README_BLOCK)


def readme_block_name(preset: str) -> str:
    """The block a bench of ``preset`` fills: ``bench`` (common recipe) or ``bench-authors``, so both fit one page."""
    return README_BLOCK if preset == "common" else f"{README_BLOCK}-{preset}"


@dataclass(frozen=True)
class BenchConfig:
    """What ``dus-gym bench`` runs.

    Args:
        tasks: task names with a spec in envs/ (their budget, learner and CMD settings are used).
        methods: balancing methods (dus_gym/core/methods).
        samplers: samplers; "ppo" needs ``policy``.
        seeds: seeds of every cell.
        n_iterations: the budget of every run in learner iterations (None: each task spec's own).
        alone: also train each modality alone (reference rows and their late fusion).
        workers: parallel processes (None: the CPU count, at most the number of cells to run).
        out_dir: where cells, results.csv, table.md and the plots go.
        policy: a policy folder written by train_policy.py, for the ppo sampler.
        plot_seed: the seed whose CMD and count histories are plotted (None: the first seed).
        overrides: RunConfig keys applied to every cell (e.g. {"learner": {"device": "cuda"}}).
        method_kwargs: per method, its keyword arguments (e.g. {"ogm-ge": {"alpha": 0.5}}); they win over the preset.
        preset: "common" (the task spec's learner, the methods' defaults) or "authors" (each method's optimiser,
            lr, schedule and keywords from its authors' script; :mod:`dus_gym.core.methods.presets`).
    """

    tasks: tuple[str, ...] = ("synthetic", "mfeat")
    methods: tuple[str, ...] = DEFAULT_METHODS
    samplers: tuple[str, ...] = ("uniform", "heuristic")
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    n_iterations: int | None = None
    alone: bool = True
    workers: int | None = None
    out_dir: str = "runs/bench"
    policy: str | None = None
    plot_seed: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    method_kwargs: dict[str, Any] = field(default_factory=dict)
    preset: str = "common"

    def __post_init__(self) -> None:
        check_preset(self.preset)
        axes = [key for key in AXES if key in self.overrides]
        axes += [f"learner.{key}" for key in ("method", "method_kwargs") if key in self.overrides.get("learner", {})]
        if axes:
            raise ConfigError(f"{', '.join(axes)} are axes of the bench, not overrides: use --tasks, --samplers, "
                              "--seeds, --methods and --method-kwargs")
        for name, kwargs in self.method_kwargs.items():
            if name not in self.methods:
                raise ConfigError(f"method_kwargs for '{name}', which is not among the methods {list(self.methods)}")
            if not isinstance(kwargs, dict):
                raise ConfigError(f"method_kwargs of '{name}' must be a mapping, got {kwargs!r}")
        for name in self.methods:  # names and keywords, with the same messages as a run's
            make_method(name, **self.method_kwargs.get(name, {}))
        if "ppo" in self.samplers and not self.policy:
            raise ConfigError("the ppo sampler needs --policy PATH (a folder written by train_policy.py)")
        if not self.seeds or not self.tasks or not self.methods or not self.samplers:
            raise ConfigError("bench needs at least one task, method, sampler and seed")
        check_seeds(self.seeds)
        for where in ("tasks", "methods", "samplers"):
            check_distinct(getattr(self, where), where)
        if self.n_iterations is not None and self.n_iterations < 1:
            raise ConfigError(f"n_iterations must be >= 1, got {self.n_iterations}")
        check_workers(self.workers)
        if self.plot_seed is not None and self.plot_seed not in self.seeds:
            raise ConfigError(f"plot_seed {self.plot_seed} is not one of the seeds {list(self.seeds)}")


def cell_config(bench: BenchConfig, task: str, sampler: str, flags: dict[str, Any]) -> dict[str, Any]:
    """The run-config mapping of a cell: the one resolver (spec, sampler settings, flags, overrides), no TensorBoard.

    The overrides win over the spec and the sampler settings; their ``sampler_kwargs`` reach the
    samplers that take them (:func:`~dus_gym.samplers.overrides_per_sampler`), never the fixed
    counts of the modalities trained alone.
    """
    if bench.n_iterations is not None:
        flags = {"n_iterations": bench.n_iterations, "epochs": None, **flags}
    overrides = overrides_per_sampler(bench.overrides, bench.samplers)[sampler] if sampler in bench.samplers else \
        {k: v for k, v in bench.overrides.items() if k != "sampler_kwargs"}
    data = resolve_run_config(task, sampler=sampler, flags=flags, overrides=overrides, preset=bench.preset)
    return deep_merge(data, {"tensorboard": False})


def plan_cells(bench: BenchConfig) -> list[Cell]:
    """Every cell of the bench, validated (a bad task, sampler or config fails here, before any run)."""
    cells = []
    for task in bench.tasks:
        base = from_dict(RunConfig, cell_config(bench, task, "uniform", {}))
        modalities = cached_task(base.task, **base.task_kwargs).modalities
        for method in bench.methods:
            learner = {"method": method}
            if method in bench.method_kwargs:
                learner["method_kwargs"] = bench.method_kwargs[method]
            for sampler in bench.samplers:
                policy = {"sampler_kwargs": {"policy": str(Path(bench.policy).resolve())}} if sampler == "ppo" else {}
                for seed in bench.seeds:
                    data = cell_config(bench, task, sampler, {"learner": learner, "seed": seed, **policy})
                    cells.append(Cell(f"{task}/{method}/{sampler}/seed{seed}", task, method, sampler, seed,
                                      _validated(data, len(modalities)), preset=bench.preset))
        if bench.alone:
            B = base.learner.batch_size
            for k, m in enumerate(modalities):
                counts = [B if j == k else 0 for j in range(len(modalities))]
                for seed in bench.seeds:
                    data = cell_config(bench, task, "constant", {"sampler_kwargs": {"counts": counts}, "seed": seed})
                    cells.append(Cell(f"{task}/alone-{m}/seed{seed}", task, "alone", m, seed,
                                      _validated(data, len(modalities)), alone=m, preset=bench.preset))
    return cells


def _validated(data: dict[str, Any], n_modalities: int) -> dict[str, Any]:
    """The cell's config, with its method and sampler built once: a bad setting or policy fails before any run."""
    config = from_dict(RunConfig, data)
    check_method_fusion(config.learner.method, config.learner.fusion)
    make_method(config.learner.method, **config.learner.method_kwargs)
    key = json.dumps([config.sampler, config.learner.batch_size, n_modalities, config.sampler_kwargs], sort_keys=True,
                     default=str)
    if key not in _CHECKED_SAMPLERS:
        make_sampler(config.sampler, config.learner.batch_size, n_modalities, **config.sampler_kwargs)
        _CHECKED_SAMPLERS.add(key)
    return to_dict(config)


_CHECKED_SAMPLERS: set[str] = set()
"""Sampler settings already built once in this process (a policy is loaded once, not once per cell)."""


def run_bench(bench: BenchConfig, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) every cell, then write results.csv, table.md and the plots; returns a summary."""
    require("matplotlib", "bench", "the bench plots")  # before the runs, not after
    out = Path(bench.out_dir)
    cells_dir = out / "cells"
    cells = plan_cells(bench)
    records, ran, workers = execute_cells(cells, cells_dir, bench.workers, progress)
    # a record is the cell's when its config is the same: an alone cell (the common recipe under either preset)
    # is kept across presets and reported under this bench's preset
    ordered = [{**records[cell.key], "preset": cell.preset} for cell in cells]
    histories = {cell.key: dict(np.load(cells_dir / f"{cell.file_stem}.npz")) for cell in cells}
    rows = summary_rows(ordered, histories)
    write_text_atomic(out / "results.csv", results_csv(ordered))
    table = format_bench_table(rows)
    write_text_atomic(out / "table.md", table + "\n")
    plots = [plot_accuracy(rows, out / "accuracy.png")]
    for task in bench.tasks:
        seed = bench.seeds[0] if bench.plot_seed is None else bench.plot_seed
        plots.append(plot_histories(task, ordered, histories, seed, out / f"curves-{task}.png"))
    return {"cells": len(cells), "ran": ran, "workers": workers, "table": table, "plots": plots,
            "out_dir": str(out)}


def _interval(values: list[float]) -> tuple[float, float]:
    """95 % Student-t interval of the mean (nan bounds for a single value)."""
    return mean_interval(values)[1:]


REFERENCES = ("uniform", "heuristic")
"""Samplers every other row of the same method is compared with, seed by seed (paired differences)."""
DUS = ("unimodal-aux", "heuristic")
"""DUS itself (its base method with the heuristic sampler): every other row of the task is compared with it,
seed by seed, so that methods acting at the data level (``sample``, ``relearning``) meet DUS in one column."""


def summary_rows(records: list[dict[str, Any]], histories: dict[str, dict[str, np.ndarray]]) -> list[dict[str, Any]]:
    """One row per (task, method, sampler) with the seeds' values; plus late fusion per task."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["task"], r["method"], r["sampler"]), []).append(r)
    rows = []
    for (task, method, sampler), group in groups.items():
        rs = [r for r in group if not r.get("diverged")]  # a diverged run has no metrics; it is counted
        s = [r["summary"] for r in rs]
        modalities = group[0]["summary"]["modalities"]
        alone = group[0]["alone"]
        row = {"task": task, "method": method, "sampler": sampler, "preset": group[0].get("preset", "common"),
               "alone": alone, "modalities": modalities,
               "seeds": [r["seed"] for r in rs], "diverged": len(group) - len(rs),
               "fused": None if alone else [x["test"]["fused"]["acc"] for x in s],
               "f1": [x["test"][alone]["f1"] for x in s] if alone else [x["test"]["fused"]["f1"] for x in s],
               "acc": {m: [x["test"][m]["acc"] for x in s] for m in modalities if alone in (None, m)},
               "shapley": ({m: [x["shapley"][m] for x in s if x.get("shapley")] for m in modalities}
                           if alone is None else {}),
               # BalanceBenchmark's imbalance measure as a balance degree; a record written before it has none
               "balance": [x["balance"] for x in s if x.get("balance") is not None] if alone is None else [],
               "gap": None if alone else [x["final_gap"] for x in s],
               "iterations": int(np.mean([x["iterations"] for x in s])) if s else None,
               "samples": {m: [x["samples_seen"][m] for x in s] for m in modalities},
               "epochs": [x["epochs"] for x in s],
               "steps": [x["optimizer_steps"] for x in s if "optimizer_steps" in x],
               "flops": [x["flops_per_iteration"] for x in s if x.get("flops_per_iteration") is not None],
               "seconds": [x["train_seconds"] for x in s]}
        rows.append(row)
    for task in dict.fromkeys(r["task"] for r in records):
        alone = [r for r in records if r["task"] == task and r["alone"] is not None and not r.get("diverged")]
        if not alone:
            continue
        modalities = alone[0]["summary"]["modalities"]
        late = []
        for seed in dict.fromkeys(r["seed"] for r in alone):
            parts = [histories[r["key"]] for r in alone if r["seed"] == seed]
            if len(parts) != len(modalities):
                continue
            late.append(late_fusion_accuracy([p["probabilities"] for p in parts], parts[0]["labels"]))
        rows.append({"task": task, "method": "late fusion", "sampler": "alone models",
                     "preset": alone[0].get("preset", "common"), "alone": "late",
                     "modalities": modalities, "seeds": [], "diverged": 0, "fused": late, "f1": None, "acc": {},
                     "shapley": {}, "balance": [], "gap": None, "iterations": None, "samples": {}, "epochs": [],
                     "steps": [], "flops": [], "seconds": None})
    for row in rows:  # paired differences to the same method with the reference samplers, seed by seed
        row["delta"] = {}
        if row["alone"] is not None:
            continue
        for reference in REFERENCES:
            ref = next((r for r in rows if r["task"] == row["task"] and r["method"] == row["method"]
                        and r["sampler"] == reference and r["alone"] is None), None)
            if ref is not None and row["sampler"] != reference:
                row["delta"][reference] = paired_difference(row["seeds"], row["fused"], ref["seeds"], ref["fused"])
        dus = next((r for r in rows if r["task"] == row["task"] and (r["method"], r["sampler"]) == DUS
                    and r["alone"] is None), None)
        if dus is not None and dus is not row:
            row["delta"]["dus"] = paired_difference(row["seeds"], row["fused"], dus["seeds"], dus["fused"])
    return rows


def _pm(values: Iterable[float] | None, scale: float = 100.0, digits: int = 1) -> str:
    if not values:
        return "—"
    values = list(values)
    return format_mean_std(values, scale, digits) if len(values) > 1 else f"{scale * values[0]:.{digits}f}"


def _mean(values: Iterable[float] | None, digits: int = 0, scale: float = 1.0) -> str:
    values = list(values or [])
    return f"{scale * float(np.mean(values)):.{digits}f}" if values else "—"


def format_delta(delta: tuple[float, float, float] | None) -> str:
    """A paired difference in points with its interval, or a dash (nan bounds: one seed)."""
    return "—" if delta is None else format_difference(delta)


def format_bench_table(rows: list[dict[str, Any]]) -> str:
    """Markdown tables (one per task): accuracy with its interval and paired differences, beside what it cost.

    Per row: the method preset it ran with (common or authors), mean ± std over seeds of the fused
    accuracy and its 95 % interval (clipped to [0, 100]), each modality's head accuracy and Shapley
    contribution to the fused accuracy, the balance degree of those contributions
    (:func:`dus_gym.core.metrics.balance_degree`, on [0, 1]), the paired differences to uniform and to
    the heuristic sampler (same method, same seeds) and to DUS (:data:`DUS`, same seeds) with their
    95 % intervals (a dash where the bench has no such row), final |CMD|, and the
    cost: samples seen per modality, epochs, optimiser steps, model FLOPs per iteration (forward and
    backward) and wall time per run.
    """
    out = []
    for task in dict.fromkeys(r["task"] for r in rows):
        task_rows = [r for r in rows if r["task"] == task]
        modalities = task_rows[0]["modalities"]
        iterations = sorted({r["iterations"] for r in task_rows if r["iterations"]})
        head = (["method", "sampler", "preset", "fused acc", "95% CI"] + [f"acc {m}" for m in modalities]
                + [f"Shapley {m}" for m in modalities] + ["balance"]
                + ["Δ vs uniform [95% CI]", "Δ vs heuristic [95% CI]", "Δ vs DUS [95% CI]", "final abs(CMD)"]
                + [f"samples {m}" for m in modalities] + ["epochs", "steps", "MFLOP/iter", "wall s", "seeds"])
        budget = ", ".join(str(i) for i in iterations) or "—"
        lines = [f"**{task}** ({budget} learner iterations per run; accuracies, Shapley values and differences in "
                 "points of test accuracy; balance on [0, 1])", "", *table_header(head)]
        for r in task_rows:
            fused = r["fused"]
            lo, hi = _interval(fused) if fused else (float("nan"), float("nan"))
            # an accuracy lies in [0, 100] %: the t interval is shown clipped to it
            ci = f"[{max(0.0, 100 * lo):.1f}, {min(100.0, 100 * hi):.1f}]" if fused and len(fused) > 1 else "—"
            method = f"alone ({r['sampler']})" if r["alone"] not in (None, "late") else r["method"]
            sampler = "—" if r["alone"] not in (None, "late") else r["sampler"]
            row = [method, sampler, r.get("preset", "common"), _pm(fused), ci]
            row += [_pm(r["acc"].get(m)) for m in modalities]
            row += [_pm(r["shapley"].get(m)) for m in modalities]
            row += [_pm(r["balance"], scale=1.0, digits=2)]
            row += [format_delta(r["delta"].get(ref)) for ref in (*REFERENCES, "dus")]
            row += [_pm(r["gap"], scale=1.0, digits=3)]
            row += [_mean(r["samples"].get(m)) for m in modalities]
            row += [_mean(r["epochs"], 1), _mean(r["steps"]), _mean(r["flops"], 2, 1e-6),
                    _mean(r["seconds"], 1), _seeds_cell(r)]
            lines.append(table_row(row))
        out.append("\n".join(lines))
    return "\n\n".join(out)


def _seeds_cell(row: dict[str, Any]) -> str:
    n = len(row["seeds"]) or len(row["fused"] or [])
    return f"{n} (+{row['diverged']} diverged)" if row["diverged"] else str(n)


def results_csv(records: list[dict[str, Any]]) -> str:
    """One line per cell: identifiers (the preset too), fused and per-modality metrics, balance, |CMD|, time."""
    modalities = list(dict.fromkeys(m for r in records for m in r["summary"]["modalities"]))
    fields = (["task", "method", "sampler", "preset", "seed", "fused_acc", "fused_f1", "fused_map"]
              + [f"{k}_{m}" for m in modalities for k in ("acc", "f1", "mean_count", "samples", "shapley", "final_cmd")]
              + ["balance", "final_abs_cmd", "iterations", "epochs", "optimizer_steps", "flops_per_iteration",
                 "train_seconds", "diverged"])
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in records:
        s = r["summary"]
        alone = r["alone"]
        if r.get("diverged"):
            writer.writerow({"task": r["task"], "method": r["method"], "sampler": r["sampler"],
                             "preset": r.get("preset", "common"), "seed": r["seed"], "diverged": r["diverged"]})
            continue
        line = {"task": r["task"], "method": r["method"], "sampler": r["sampler"], "preset": r.get("preset", "common"),
                "seed": r["seed"],
                "iterations": s["iterations"], "epochs": f"{s['epochs']:.3f}",
                "optimizer_steps": s.get("optimizer_steps", ""),
                "flops_per_iteration": s.get("flops_per_iteration") or "",
                "train_seconds": f"{s['train_seconds']:.2f}"}
        if alone is None:
            line.update({"fused_acc": s["test"]["fused"]["acc"], "fused_f1": s["test"]["fused"]["f1"],
                         "fused_map": s["test"]["fused"]["map"], "final_abs_cmd": s["final_gap"],
                         "balance": "" if s.get("balance") is None else s["balance"]})
        for m in s["modalities"]:
            if alone not in (None, m):
                continue
            line.update({f"acc_{m}": s["test"][m]["acc"], f"f1_{m}": s["test"][m]["f1"],
                         f"mean_count_{m}": s["mean_counts"][m], f"samples_{m}": s["samples_seen"][m]})
            if alone is None:
                line[f"final_cmd_{m}"] = s["final_cmd"][m]
                line[f"shapley_{m}"] = s.get("shapley", {}).get(m, "")
        writer.writerow(line)
    return buffer.getvalue()


def _figure(nrows: int, ncols: int, size: tuple[float, float]) -> Any:
    matplotlib = require("matplotlib", "bench", "the bench plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(nrows, ncols, figsize=size, squeeze=False)


def _save(fig: Any, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return str(path)


def plot_accuracy(rows: list[dict[str, Any]], path: Path) -> str:
    """Fused test accuracy per method and sampler with 95 % intervals, one panel per task."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = _figure(1, len(tasks), (6.0 * len(tasks), 4.6))
    for ax, task in zip(axes[0], tasks, strict=True):
        trained = [r for r in rows if r["task"] == task and r["alone"] is None and r["fused"]]
        methods = list(dict.fromkeys(r["method"] for r in trained))
        samplers = list(dict.fromkeys(r["sampler"] for r in trained))
        width = 0.8 / max(1, len(samplers))
        for j, sampler in enumerate(samplers):
            xs, means, errs = [], [], [[], []]
            for i, method in enumerate(methods):
                r = next((r for r in trained if r["method"] == method and r["sampler"] == sampler), None)
                if r is None:
                    continue
                mean = 100 * float(np.mean(r["fused"]))
                lo, hi = _interval(r["fused"])
                xs.append(i + (j - (len(samplers) - 1) / 2) * width)
                means.append(mean)
                errs[0].append(0.0 if math.isnan(lo) else mean - max(0.0, 100 * lo))
                errs[1].append(0.0 if math.isnan(hi) else min(100.0, 100 * hi) - mean)
            ax.bar(xs, means, width, yerr=errs, capsize=3, label=sampler)
        for r in rows:
            if r["task"] == task and r["alone"] == "late" and r["fused"]:
                ax.axhline(100 * float(np.mean(r["fused"])), color="k", linestyle="--", linewidth=1,
                           label="late fusion of alone models")
        low = min([100 * min(r["fused"]) for r in trained] or [0.0])
        ax.set_ylim(max(0.0, low - 10), 101)
        ax.set_xticks(range(len(methods)), methods, rotation=15)
        ax.set_ylabel("fused test accuracy (%)")
        ax.set_title(f"{task}: mean and 95 % interval over seeds")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=4)  # below: bars stay visible
    return _save(fig, path)


def plot_histories(task: str, records: list[dict[str, Any]], histories: dict[str, dict[str, np.ndarray]],
                   seed: int, path: Path) -> str:
    """CMD d(m) of the first modality and the counts of every modality over training, for one seed."""
    runs = [r for r in records
            if r["task"] == task and r["alone"] is None and r["seed"] == seed and not r.get("diverged")]
    fig, axes = _figure(1, 2, (12.0, 4.0))
    styles = ["-", "--", ":", "-."]
    samplers = list(dict.fromkeys(r["sampler"] for r in runs))
    methods = list(dict.fromkeys(r["method"] for r in runs))
    colors = {m: f"C{i}" for i, m in enumerate(methods)}
    first = runs[0]["summary"]["modalities"][0] if runs else ""
    for r in runs:
        h = histories[r["key"]]
        style = styles[samplers.index(r["sampler"]) % len(styles)]
        axes[0][0].plot(np.arange(1, len(h["cmd"]) + 1), h["cmd"][:, 0], style, color=colors[r["method"]], linewidth=1,
                        label=f"{r['method']} / {r['sampler']}")
        if r["sampler"] != "uniform":
            for k, m in enumerate(r["summary"]["modalities"]):
                x, y = _smooth(h["counts"][:, k])
                axes[0][1].plot(x, y, styles[k % len(styles)], color=colors[r["method"]], linewidth=1,
                                label=f"{r['method']} / {r['sampler']}: {m}")
    axes[0][0].axhline(0.0, color="k", linewidth=0.5)
    axes[0][0].set(xlabel="learner iteration", ylabel=f"CMD d({first})", title=f"{task}, seed {seed}: CMD")
    axes[0][1].set(xlabel="learner iteration", ylabel="samples per iteration (moving mean of 20)",
                   title=f"{task}, seed {seed}: counts (non-uniform samplers)")
    for ax in axes[0]:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, ncol=2)
    return _save(fig, path)


def _smooth(y: np.ndarray, window: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Trailing moving mean of ``y`` and the iterations it ends at."""
    if len(y) < window:
        return np.arange(1, len(y) + 1), y.astype(np.float64)
    return np.arange(window, len(y) + 1), np.convolve(y.astype(np.float64), np.ones(window) / window, mode="valid")


def write_readme_block(readme: Path, bench: BenchConfig, summary: dict[str, Any], command: str) -> None:
    """Replace the bench's block of ``readme`` (:func:`readme_block_name`) with its table.

    See :mod:`dus_gym.experiments.results` for the block's markers.
    """
    readme_block.write_readme_block(readme, readme_block_name(bench.preset), summary["table"], command)


def bench_config_from_args(values: dict[str, Any]) -> BenchConfig:
    """A :class:`BenchConfig` from a mapping (a --config YAML file merged with the command line)."""
    data = dict(values)
    for key in ("tasks", "methods", "samplers", "seeds"):
        if key in data and data[key] is not None:
            data[key] = tuple(data[key])
    return from_dict(BenchConfig, {k: v for k, v in data.items() if v is not None})
