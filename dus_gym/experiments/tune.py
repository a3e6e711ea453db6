"""Hyper-parameter search with Optuna, sized for envs whose every step is real training (``dus-gym tune``).

A study lives in one folder: ``study.db`` (Optuna's RDB storage on SQLite), so a study that is
stopped (Ctrl-C, a crash, ``--timeout``) continues where it was when the same command is run again:
the trial budget counts the finished trials (complete or pruned), and a trial that a killed process
left running is marked failed and queued again with its parameters. Trials are pruned on the
intermediate validation accuracy (Optuna's median rule); a trial whose learner diverges ends as
pruned at its last validation. The best settings are written in the formats ``agents/`` uses.

This module tunes the DUS heuristic (alpha, n_min, warm-up, or a subset of them) on training runs
of a task and one balancing method, then measures the tuned and the default settings against each
other and against uniform sampling on held-out seeds, paired (the table says whether tuning helped,
and whether the heuristic helps that method at all); :func:`studies_table` puts several studies
(one per method) in one table; :mod:`dus_gym.experiments.tune_ppo` tunes PPO on a DUS env with the same study
machinery. Optuna is the ``tune`` extra (``pip install "dus-gym[tune]"``).
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from dus_gym.core.config import MAX_TRIALS, ConfigError, RunConfig, check_seeds, check_workers, shown, to_dict
from dus_gym.core.extras import require
from dus_gym.core.files import write_text_atomic
from dus_gym.experiments.cells import Cell, execute_cells
from dus_gym.experiments.results import table_header, table_row, write_results
from dus_gym.experiments.run import DivergedError, RunCallback, run_training
from dus_gym.experiments.stats import (
    aggregate_scores,
    format_aggregates,
    format_difference,
    format_mean_std,
    paired_difference,
)
from dus_gym.tasks import make_task

if TYPE_CHECKING:
    import optuna

STUDY_FILE = "study.db"
SEARCHABLE = ("alpha", "n_min", "warmup")
"""The heuristic's settings ``dus-gym tune heuristic`` can search (n_max is the task's ceiling)."""


def import_optuna() -> Any:
    """Optuna, or an ImportError that says how to install it."""
    optuna = require("optuna", "tune", "dus-gym tune's studies")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


SQLITE_HEADER = b"SQLite format 3\x00"


def check_study_file(path: Path) -> None:
    """Refuse a ``study.db`` that is not an SQLite database of Optuna studies, before Optuna opens (and writes) it.

    An empty file is a new study. The file is only read here (SQLite's read-only mode), so a refused
    file is left exactly as it was.

    Raises:
        ValueError: a text file, a truncated or corrupt database, or a database of something else.
    """
    if not path.exists() or (path.is_file() and path.stat().st_size == 0):
        return
    hint = "it is left as it is: move it away, or give another --study folder"
    if not path.is_file():
        raise ValueError(f"{path} is not a file; {hint}")
    with open(path, "rb") as f:
        if f.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
            raise ValueError(f"{path} is not an SQLite database (an Optuna study); {hint}")
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            check = db.execute("PRAGMA quick_check").fetchone()
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as err:
        raise ValueError(f"{path} is not a readable SQLite database ({err}); {hint}") from err
    if not check or check[0] != "ok":
        raise ValueError(f"{path} is a damaged SQLite database ({check[0] if check else 'no answer'}); {hint}")
    if tables and "studies" not in tables:
        raise ValueError(f"{path} is an SQLite database of something else (tables {sorted(tables)[:5]}), not of "
                         f"Optuna studies; {hint}")


def check_study_settings(study: optuna.Study, settings: dict[str, Any], path: Path) -> None:
    """Record what the trials of ``study`` depend on, or refuse to resume it with other settings.

    Raises:
        ConfigError: the study was started with other settings (its trials would be mixed with these).
    """
    plain = json.loads(json.dumps(settings, default=str))
    saved = study.user_attrs.get("settings")
    if saved is None:
        study.set_user_attr("settings", plain)
        return
    differ = [f"{key} {shown(saved.get(key))} (now {shown(plain.get(key))})" for key in sorted(set(saved) | set(plain))
              if saved.get(key) != plain.get(key)]
    if differ:
        raise ConfigError(f"the study {study.study_name} in {path} was run with other settings: {'; '.join(differ)}. "
                          "Its trials would be mixed with these: resume it with its own settings, or give another "
                          "--study folder")


def open_study(folder: str | Path, name: str, seed: int, n_startup_trials: int, n_warmup_steps: int,
               settings: dict[str, Any] | None = None) -> optuna.Study:
    """Create or load the study ``name`` in ``folder/study.db`` (maximised; TPE; median pruner).

    Trials that a killed process left ``RUNNING`` are marked failed and queued again with their
    parameters. The TPE sampler is seeded with ``seed`` plus the number of trials already in the
    study, so a resumed study does not draw its first random trials again. A file that is not a
    study database is refused before Optuna opens it, and left as it is.

    Args:
        folder: the study folder (created).
        name: the study name (one folder may hold several).
        seed: seed of the sampler.
        n_startup_trials: random trials before TPE, and finished trials before any pruning.
        n_warmup_steps: reported steps of a trial before it may be pruned.
        settings: what a trial's value depends on (task, budget, seeds...): stored with a new study,
            compared with those of a resumed one (:func:`check_study_settings`).
    """
    optuna = import_optuna()
    folder = Path(folder)
    path = folder / STUDY_FILE
    check_study_file(path)
    folder.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(f"sqlite:///{path.resolve()}")
    done = 0
    try:
        done = len(optuna.load_study(study_name=name, storage=storage).trials)
    except KeyError:
        pass  # a new study
    study = optuna.create_study(
        study_name=name, storage=storage, direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed + done, n_startup_trials=n_startup_trials),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials, n_warmup_steps=n_warmup_steps))
    if settings is not None:
        check_study_settings(study, settings, path)  # before any trial is touched
    stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for trial in stale:
        study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params)
    return study


def finished_trials(study: optuna.Study) -> int:
    """Trials that count against the budget: complete or pruned."""
    optuna = import_optuna()
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def run_study(study: optuna.Study, objective: Callable[[optuna.Trial], float], n_trials: int,
              timeout: float | None, catch: tuple[type[BaseException], ...] = (), progress: bool = True) -> None:
    """Run trials until the study holds ``n_trials`` finished ones (or ``timeout`` seconds have passed)."""
    optuna = import_optuna()
    remaining = n_trials - finished_trials(study)
    if remaining <= 0:
        print(f"study {study.study_name}: {n_trials} trials already finished", flush=True)
        return

    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if not progress:
            return
        params = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
        if trial.state == optuna.trial.TrialState.COMPLETE:
            value = f"{trial.value:.4f}"
        elif trial.state == optuna.trial.TrialState.PRUNED and trial.intermediate_values:
            step = max(trial.intermediate_values)
            value = f"pruned at step {step} ({trial.intermediate_values[step]:.4f})"
        else:
            value = trial.state.name.lower()
        best = (f"; best {study.best_value:.4f} (trial {study.best_trial.number})"
                if any(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
                else "")
        print(f"trial {trial.number}: {value} ({params}){best}", flush=True)

    study.optimize(objective, n_trials=remaining, timeout=timeout, catch=catch, callbacks=[report],
                   gc_after_trial=True)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """The best complete trial; a ValueError when none has completed."""
    optuna = import_optuna()
    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        raise ValueError(f"study {study.study_name} has no complete trial yet; run more trials")
    return study.best_trial


def round_significant(value: float, digits: int = 3) -> float:
    """``value`` rounded to ``digits`` significant digits (what is written is what is evaluated)."""
    if value == 0 or not math.isfinite(value):
        return float(value)
    return float(round(value, digits - 1 - int(math.floor(math.log10(abs(value))))))


class PruneOnValidation(RunCallback):
    """Reports the fused validation accuracy of a training run to an Optuna trial; prunes the trial.

    Args:
        trial: the trial.
        run_index: the run's place among the trial's runs (seeds one after the other): the reported step
            is ``run_index * budget + iteration``.
    """

    def __init__(self, trial: optuna.Trial, run_index: int = 0) -> None:
        super().__init__()
        self.trial = trial
        self.run_index = run_index

    def _on_iteration(self) -> bool:
        validation = self.run.validation
        if validation is not None:
            step = self.run_index * self.run.n_iterations + self.run.iteration
            self.trial.report(float(validation.fused["acc"]), step)
            if self.trial.should_prune():
                raise import_optuna().TrialPruned(f"fused val acc {validation.fused['acc']:.3f} at step {step}")
        return True


@dataclass(frozen=True)
class HeuristicTuneConfig:
    """A search over the DUS heuristic's settings on one task (``dus-gym tune heuristic``).

    Each trial trains the task on every seed of ``seeds`` (validation accuracy after the run, mean
    over the seeds: the objective); the test split is not looked at. After the search the best
    settings and the default ones (agents/heuristic.yml) are trained on ``eval_seeds`` and compared
    on test accuracy, paired.
    """

    base: RunConfig
    """The run configuration of every trial (task, learner, budget, the heuristic's default settings)."""
    folder: str
    """The study folder (study.db, heuristic.yml, best.yaml, evaluation.json, table.md)."""
    n_trials: int = 30
    """Finished trials (complete or pruned) the study should hold."""
    timeout: float | None = None
    """Seconds of this call's search (None: no limit); the study resumes later."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Learner seeds of every trial."""
    eval_seeds: tuple[int, ...] = tuple(range(100, 110))
    """Held-out learner seeds of the final comparison (disjoint from ``seeds``)."""
    sampler_seed: int = 0
    """Seed of Optuna's sampler."""
    n_startup_trials: int = 8
    """Random trials before TPE, and trials before pruning starts."""
    alpha_range: tuple[float, float] = (0.3, 100.0)
    """Log-uniform range of alpha (the sampler bounds it to [0, 100])."""
    search: tuple[str, ...] = SEARCHABLE
    """The settings searched; the others stay at the base's (e.g. ``("alpha",)``: alpha alone)."""
    workers: int | None = 1
    """Processes of the final comparison's runs (1: in this process; None: the CPU count). A trial's
    seeds run in turn in this process, so that Optuna's pruner sees each run's curve."""
    progress: bool = True

    def __post_init__(self) -> None:
        check_seeds(self.seeds, "seeds")
        check_seeds(self.eval_seeds, "eval_seeds")
        if set(self.seeds) & set(self.eval_seeds):
            raise ConfigError(f"the evaluation seeds must be held out: {sorted(set(self.seeds) & set(self.eval_seeds))}"
                              " are also tuning seeds")
        bad_timeout = self.timeout is not None and not (math.isfinite(self.timeout) and self.timeout > 0)
        if not 1 <= self.n_trials <= MAX_TRIALS or bad_timeout:
            raise ConfigError(f"trials must be from 1 to {MAX_TRIALS:_} and timeout a finite number of seconds > 0, "
                              f"got {self.n_trials} and {self.timeout}")
        lo, hi = self.alpha_range
        if not 0 < lo < hi <= 100:
            raise ConfigError(f"alpha_range must satisfy 0 < low < high <= 100, got {self.alpha_range}")
        if not self.search or len(set(self.search)) != len(self.search) or not set(self.search) <= set(SEARCHABLE):
            raise ConfigError(f"search must name some of {', '.join(SEARCHABLE)}, each once, got {list(self.search)}")
        check_workers(self.workers)
        if self.base.sampler != "heuristic":
            raise ConfigError(f"dus-gym tune heuristic tunes the heuristic sampler, the config has "
                              f"'{self.base.sampler}'")


def heuristic_space(trial: optuna.Trial, config: HeuristicTuneConfig, n_iterations: int) -> dict[str, Any]:
    """The searched settings of one trial: alpha (log), n_min (log, up to B), warmup (up to a quarter of the run).

    Only the settings in ``config.search`` are drawn; n_max stays at the task's setting (the ceiling
    of a modality's count).
    """
    n_max = int(config.base.sampler_kwargs.get("n_max", 256))
    batch = config.base.learner.batch_size
    step = max(1, n_iterations // 40)
    draw = {"alpha": lambda: trial.suggest_float("alpha", *config.alpha_range, log=True),
            "n_min": lambda: trial.suggest_int("n_min", 1, max(1, min(batch, n_max)), log=True),
            "warmup": lambda: trial.suggest_int("warmup", 0, (n_iterations // 4) // step * step, step=step)}
    return {name: draw[name]() for name in SEARCHABLE if name in config.search}


def tuned_settings(params: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """The heuristic's settings as written (agents/heuristic.yml keys): the base with the trial's values."""
    out = {**base, **params}
    out["alpha"] = round_significant(float(out["alpha"]))
    return {k: out[k] for k in ("alpha", "n_min", "n_max", "warmup") if k in out}


def tune_heuristic(config: HeuristicTuneConfig) -> dict[str, Any]:
    """Search the heuristic's settings, write them, and compare them with the default ones and uniform, held out.

    Returns the record written to ``folder/evaluation.json`` (method, best trial, settings, per-seed
    test accuracies, paired differences and their intervals, samples per modality, aggregates, the table).
    """
    base = config.base
    task = make_task(base.task, **base.task_kwargs)
    n_iterations = base.budget(len(task.splits["train"]))  # the whole split (a probe slice shortens it a little)
    learner = {k: v for k, v in asdict(base.learner).items() if k != "device"}  # the device may change
    settings = {"task": base.task, "task_kwargs": base.task_kwargs, "n_iterations": n_iterations,
                "seeds": list(config.seeds), "learner": learner, "cmd": asdict(base.cmd),
                "sampler_kwargs": base.sampler_kwargs, "alpha_range": list(config.alpha_range)}
    if config.search != SEARCHABLE:  # studies of the whole space, from before the choice, resume as they were
        settings["search"] = list(config.search)
    study = open_study(config.folder, f"{task.name}-heuristic", config.sampler_seed, config.n_startup_trials,
                       n_warmup_steps=n_iterations // 2, settings=settings)
    default = dict(base.sampler_kwargs)

    def objective(trial: optuna.Trial) -> float:
        kwargs = {**default, **heuristic_space(trial, config, n_iterations)}
        scores = []
        for i, seed in enumerate(config.seeds):
            run = replace(base, sampler_kwargs=kwargs, seed=seed)
            try:
                result = run_training(run, task=task, progress=False, probe=False,
                                      callbacks=[PruneOnValidation(trial, run_index=i)])
            except DivergedError as err:  # a setting that diverges ends as pruned at its last validation
                trial.set_user_attr("diverged", str(err))
                raise import_optuna().TrialPruned(f"diverged on seed {seed}") from err
            scores.append(result.summary["val_curve"][-1]["fused_acc"])
        trial.set_user_attr("val_acc_per_seed", scores)
        return float(np.mean(scores))

    run_study(study, objective, config.n_trials, config.timeout, progress=config.progress)
    best = best_trial(study)
    tuned = tuned_settings(best.params, default)
    folder = Path(config.folder)
    write_text_atomic(folder / "heuristic.yml", yaml.safe_dump({base.task: tuned}, sort_keys=False))
    run_config = {**to_dict(base), "sampler": "heuristic", "sampler_kwargs": tuned}
    run_config.pop("seed", None)
    write_text_atomic(folder / "best.yaml", yaml.safe_dump(run_config, sort_keys=False))
    record = evaluate_heuristic(base, task, default, tuned, config.eval_seeds, folder / "cells", config.workers,
                                config.progress)
    record.update({"method": base.learner.method, "search": list(config.search), "study": study.study_name,
                   "best_trial": best.number, "best_val_acc": best.value,
                   "trials_finished": finished_trials(study), "tuning_seeds": list(config.seeds)})
    write_results(folder, "evaluation", record)
    return record


def evaluate_heuristic(base: RunConfig, task: Any, default: dict[str, Any], tuned: dict[str, Any],
                       seeds: Sequence[int], cells_dir: Path, workers: int | None = 1, progress: bool = True
                       ) -> dict[str, Any]:
    """Train uniform sampling and the default and tuned heuristics on ``seeds``; paired differences of test accuracy.

    Uniform sampling (B samples of every modality) is the reference that says whether the heuristic
    helps the method at all; default vs tuned says whether tuning helped. A run that diverges is a
    result: its accuracy is recorded as None, counted in the table, and the paired differences use
    the seeds both sides finished. The runs are cells (:mod:`dus_gym.experiments.cells`) in
    ``cells_dir``: ``workers`` processes run them, and a comparison interrupted after the search
    continues where it stopped.
    """
    runs = (("uniform", "uniform", {}), ("default", "heuristic", default), ("tuned", "heuristic", tuned))
    cells = [Cell(f"{label}/seed{seed}", task.name, base.learner.method, label, seed,
                  to_dict(replace(base, sampler=sampler, sampler_kwargs=dict(kwargs), seed=seed)))
             for label, sampler, kwargs in runs for seed in seeds]
    records = execute_cells(cells, cells_dir, workers, progress, "evaluation runs")[0]
    acc: dict[str, list[float | None]] = {label: [] for label, _, _ in runs}
    samples: dict[str, list[dict[str, int]]] = {label: [] for label, _, _ in runs}
    diverged: dict[str, list[str]] = {label: [] for label, _, _ in runs}
    for cell in cells:
        record = records[cell.key]
        if record["diverged"]:
            acc[cell.sampler].append(None)
            diverged[cell.sampler].append(f"seed {cell.seed}: {record['diverged']}")
            continue
        acc[cell.sampler].append(record["summary"]["test"]["fused"]["acc"])
        samples[cell.sampler].append(record["summary"]["samples_seen"])
    d, lo, hi = paired_finished(acc["tuned"], acc["default"])
    vs_uniform = {label: dict(zip(("mean", "low", "high"), paired_finished(acc[label], acc["uniform"]), strict=True))
                  for label in ("default", "tuned")}
    mean_samples = {label: {m: float(np.mean([s[m] for s in per_seed])) for m in per_seed[0]} if per_seed else {}
                    for label, per_seed in samples.items()}
    finished = {label: [a for a in values if a is not None] for label, values in acc.items()}
    aggregates = (aggregate_scores(finished, reference="default") if all(finished.values()) else {})

    def settings(kwargs: dict[str, Any]) -> str:
        return ", ".join(f"{k} {_short(kwargs[k])}" for k in ("alpha", "n_min", "n_max", "warmup") if k in kwargs)

    def versus(label: str) -> str:
        return difference_cell(tuple(vs_uniform[label].values()))

    lines = [*table_header(["sampler", "settings", "test fused acc", "samples most/least", "Δ vs uniform [95% CI]",
                            "Δ tuned vs default [95% CI]"]),
             table_row(["uniform", "B of every modality", accuracy_cell(acc["uniform"]),
                        sample_ratio(mean_samples["uniform"]), "—", "—"]),
             table_row(["heuristic, default", settings(default), accuracy_cell(acc["default"]),
                        sample_ratio(mean_samples["default"]), versus("default"), "—"]),
             table_row(["heuristic, tuned", settings(tuned), accuracy_cell(acc["tuned"]),
                        sample_ratio(mean_samples["tuned"]), versus("tuned"), difference_cell((d, lo, hi))])]
    table = "\n".join(lines) + "\n\n" + (format_aggregates(aggregates, "default", label="heuristic") if aggregates
                                           else "(no IQM: every run of a sampler diverged)")
    return {"task": task.name, "eval_seeds": list(seeds), "default": default, "tuned": tuned, "test_acc": acc,
            "diverged": diverged, "paired_difference": {"mean": d, "low": lo, "high": hi}, "vs_uniform": vs_uniform,
            "samples": mean_samples, "aggregates": {k: asdict(v) for k, v in aggregates.items()}, "table": table}


def paired_finished(values: Sequence[float | None], reference: Sequence[float | None]) -> tuple[float, float, float]:
    """:func:`paired_difference` over the seeds where both runs finished (None: diverged); nan when none did."""
    def finished(runs: Sequence[float | None]) -> tuple[list[int], list[float]]:
        kept = [(i, v) for i, v in enumerate(runs) if v is not None]
        return [i for i, _ in kept], [v for _, v in kept]

    return paired_difference(*finished(values), *finished(reference)) or (float("nan"),) * 3


def difference_cell(delta: tuple[float, float, float]) -> str:
    """:func:`format_difference`, or a dash when no seed finished on both sides."""
    return "— (no seed finished on both sides)" if math.isnan(delta[0]) else format_difference(delta)


def accuracy_cell(values: Sequence[float | None]) -> str:
    """Mean ± std of the finished runs' accuracies in %, with ``(+k diverged)`` for the runs that diverged."""
    finished = [v for v in values if v is not None]
    lost = len(values) - len(finished)
    if not finished:
        return f"all {lost} diverged"
    return format_mean_std(finished) + (f" (+{lost} diverged)" if lost else "")


def sample_ratio(samples: dict[str, float]) -> str:
    """The most-sampled modality and its samples over the least-sampled one's, e.g. ``"4.1x weak"`` (or ``"equal"``)."""
    if not samples:  # every run diverged
        return "—"
    most = max(samples, key=lambda m: samples[m])
    least = min(samples.values())
    if samples[most] == least:
        return "equal"
    return f"{samples[most] / least:.1f}x {most}" if least > 0 else f"all {most}"


def studies_table(records: Sequence[dict[str, Any]]) -> str:
    """One row per study (``evaluation.json`` records of :func:`tune_heuristic`): the heuristic as a plug-in.

    Per study: task, method, the tuned settings that were searched, test accuracy of uniform and of the
    default and tuned heuristics (mean ± std over the held-out seeds), their paired differences with
    95 % intervals, and the most-sampled modality's samples over the least-sampled one's.

    Raises:
        ValueError: a record from before the comparison had its uniform runs (run its study again).
    """
    lines = table_header(["task", "method", "tuned", "uniform", "heuristic default", "heuristic tuned",
                          "Δ default vs uniform [95% CI]", "Δ tuned vs uniform [95% CI]",
                          "Δ tuned vs default [95% CI]", "samples most/least default", "tuned", "seeds"])
    for record in records:
        if "uniform" not in record.get("test_acc", {}):
            raise ValueError(f"the study of {record.get('task')} ({record.get('method', 'unimodal-aux')}) was "
                             "evaluated without uniform runs: run its dus-gym tune heuristic command again")
        acc, searched = record["test_acc"], record.get("search", list(SEARCHABLE))
        tuned = ", ".join(f"{k} {_short(record['tuned'][k])}" for k in SEARCHABLE if k in searched)
        lines.append(table_row([
            record["task"], record["method"], tuned, accuracy_cell(acc["uniform"]),
            accuracy_cell(acc["default"]), accuracy_cell(acc["tuned"]),
            difference_cell(tuple(record["vs_uniform"]["default"].values())),
            difference_cell(tuple(record["vs_uniform"]["tuned"].values())),
            difference_cell(tuple(record["paired_difference"].values())),
            sample_ratio(record["samples"]["default"]), sample_ratio(record["samples"]["tuned"]),
            str(len(record["eval_seeds"]))]))
    return "\n".join(lines)
