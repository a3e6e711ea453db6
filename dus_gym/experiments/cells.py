"""The cells of an experiment: one training run each, run in parallel processes, resumable.

A :class:`Cell` is one run (a task, a method, a sampler, a seed and the resolved run config).
:func:`execute_cells` runs the cells that have no finished record in a folder, in spawned
processes with one torch thread each; each cell writes its record (JSON) and its histories
(counts and CMD per iteration, .npz) atomically, so an interrupted experiment continues where it
stopped and a damaged record is run again. ``dus-gym compare`` (on a task or a task family) and
``dus-gym bench`` run their cells here.
"""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from dus_gym.core.config import MAX_SHOWN, RunConfig, from_dict
from dus_gym.core.files import write_bytes_atomic, write_text_atomic
from dus_gym.experiments.run import DivergedError, run_training
from dus_gym.tasks import cached_task


def file_stem(key: str) -> str:
    """The file name of a cell's record: its key with path-safe characters."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key)


@dataclass(frozen=True)
class Cell:
    """One training run of an experiment: its key, its resolved run config, and what it is.

    Args:
        key: the cell's name, unique in its experiment (its files are named after it).
        task: the task's name.
        method: the balancing method.
        sampler: the sampler, or the row label of a comparison.
        seed: the run's seed.
        config: the resolved run config (a RunConfig mapping).
        alone: the modality trained alone, or None (its test probabilities are kept for late fusion).
        run_dir: a folder for the run's own files (config.yaml, results.json, TensorBoard), or None.
        probe: fit the linear probe of every encoder at the end (``probe_acc`` in the summary).
        preset: the method preset the config was resolved with ("common" or "authors"), kept in the record.
    """

    key: str
    task: str
    method: str
    sampler: str
    seed: int
    config: dict[str, Any]
    alone: str | None = None
    run_dir: str | None = None
    probe: bool = False
    preset: str = "common"

    @property
    def file_stem(self) -> str:
        """File name of the cell (the key with path-safe characters)."""
        return file_stem(self.key)


def _init_worker() -> None:
    """A worker process: one torch thread (one process per core)."""
    torch.set_num_threads(1)


def run_cell(cell: Cell, cells_dir: str) -> dict[str, Any]:
    """Run one cell and write its record (JSON) and histories (.npz) atomically; returns the record."""
    config = from_dict(RunConfig, cell.config)
    task = cached_task(config.task, **config.task_kwargs)
    folder = Path(cells_dir)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        result = run_training(config, run_dir=cell.run_dir, task=task, progress=False, probe=cell.probe)
    except DivergedError as err:  # a result of the cell (counted and reported), not a failure of the bench
        summary, diverged = {"modalities": list(task.modalities)}, str(err)
        arrays = {"counts": np.zeros((0, len(task.modalities))), "cmd": np.zeros((0, len(task.modalities)))}
    else:
        summary, diverged = result.summary, None
        arrays = {"counts": result.counts, "cmd": result.cmd}
        if cell.alone is not None:
            arrays["probabilities"] = result.test.unimodal_probabilities[cell.alone]
            arrays["labels"] = result.test.labels
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    write_bytes_atomic(folder / f"{cell.file_stem}.npz", buffer.getvalue())
    record = {"key": cell.key, "task": cell.task, "method": cell.method, "sampler": cell.sampler,
              "seed": cell.seed, "alone": cell.alone, "preset": cell.preset, "config": cell.config,
              "summary": summary, "diverged": diverged}
    write_text_atomic(folder / f"{cell.file_stem}.json", json.dumps(record, indent=1))
    return record


def load_histories(cell: Cell, cells_dir: Path) -> dict[str, np.ndarray]:
    """The per-iteration histories of a finished cell: counts and CMD (and, alone, test probabilities and labels)."""
    with np.load(Path(cells_dir) / f"{cell.file_stem}.npz", allow_pickle=False) as histories:
        return {name: histories[name] for name in histories.files}


RECORD_FIELDS = ("key", "task", "method", "sampler", "seed", "alone", "config", "summary", "diverged")
SUMMARY_FIELDS = ("modalities", "test", "iterations", "epochs", "samples_seen", "mean_counts", "final_cmd",
                  "final_gap", "train_seconds")
"""What a finished cell's record holds (a diverged cell's summary holds only the modalities)."""


def load_cell(cell: Cell, cells_dir: Path) -> dict[str, Any] | None:
    """The finished record of ``cell`` when a complete one with the same config exists (else None: run it).

    A record or history file that is unreadable, truncated or lacks fields is treated as missing,
    so the cell runs again (and its files are replaced atomically).
    """
    path, arrays = cells_dir / f"{cell.file_stem}.json", cells_dir / f"{cell.file_stem}.npz"
    if not path.is_file() or not arrays.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        with np.load(arrays, allow_pickle=False) as histories:
            needed = ["counts", "cmd"] + (["probabilities", "labels"] if cell.alone and not record.get("diverged")
                                          else [])
            for name in needed:
                histories[name]  # reads (and CRC-checks) every array
    except Exception as err:  # a truncated .npz or .json raises several types
        _warn_rerun(path, err)
        return None
    summary = record.get("summary") if isinstance(record, dict) else None
    complete = (isinstance(summary, dict) and all(k in record for k in RECORD_FIELDS)
                and (record["diverged"] or all(k in summary for k in SUMMARY_FIELDS)) and "modalities" in summary)
    if not complete:
        _warn_rerun(path, ValueError("fields are missing"))
        return None
    return record if record.get("config") == json.loads(json.dumps(cell.config)) else None


def _warn_rerun(path: Path, err: BaseException) -> None:
    """Say that a damaged record is run again."""
    tqdm.write(f"{path.name} is incomplete or damaged ({type(err).__name__}: {str(err)[:MAX_SHOWN]}); "
               "running the cell again")


def execute_cells(cells: Sequence[Any], cells_dir: Path, workers: int | None = None, progress: bool = True,
                  desc: str = "cells", run: Callable[[Any, str], dict[str, Any]] = run_cell,
                  load: Callable[[Any, Path], dict[str, Any] | None] = load_cell
                  ) -> tuple[dict[str, dict[str, Any]], int, int]:
    """Run the cells without a finished record in ``cells_dir``, in parallel processes (one torch thread each).

    Returns the records by key, how many cells ran and how many processes ran them. A failing cell or
    Ctrl-C stops the workers at once; the finished cells stay written, so a rerun continues.

    Args:
        cells: the cells, each with a unique ``key`` (a :class:`Cell`: one training run; another kind of
            cell comes with its own ``run`` and ``load``).
        cells_dir: where the records are written.
        workers: processes (1: in this process; None: the CPU count, at most one per cell to run).
        progress: show a progress bar.
        desc: the bar's label.
        run: runs one cell and writes its record atomically, returning it (a module-level function:
            it is pickled to the workers).
        load: the finished record of a cell, or None when it must run (missing, damaged, other settings).
    """
    records: dict[str, dict[str, Any]] = {}
    todo = []
    for cell in cells:
        record = load(cell, cells_dir)
        if record is None:
            todo.append(cell)
        else:
            records[cell.key] = record
    workers = min(workers or os.cpu_count() or 1, max(1, len(todo)))
    bar = tqdm(total=len(cells), initial=len(cells) - len(todo), desc=desc, disable=not progress,
               dynamic_ncols=True)
    try:
        if workers == 1:  # in this process, with its torch threads
            for cell in todo:
                records[cell.key] = run(cell, str(cells_dir))
                bar.update(1)
        elif todo:
            # spawn: a forked child of a process whose torch thread pool already ran can deadlock
            pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker)
            try:
                for record in pool.imap_unordered(partial(run, cells_dir=str(cells_dir)), todo):
                    records[record["key"]] = record
                    bar.update(1)
            except BaseException:  # a cell failed or the user interrupted: stop now, finished cells stay written
                pool.terminate()
                raise
            else:
                pool.close()
            finally:
                pool.join()
    finally:
        bar.close()
    return records, len(todo), workers


__all__ = ["Cell", "execute_cells", "load_cell", "load_histories", "run_cell"]
