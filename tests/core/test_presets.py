"""Method presets: the authors' file covers every method, a preset sets the learner and the method's keywords,
explicit values win, and ``dus-gym run`` / ``bench`` take ``--preset`` (light: configs only, one 2-iteration cell)."""

import csv
import io

import pytest

from dus_gym.cli import build_parser
from dus_gym.cli.run import new_run_config
from dus_gym.core.config import ConfigError, LearnerConfig, RunConfig, from_dict
from dus_gym.core.methods import METHODS, make_method
from dus_gym.core.methods.presets import PRESET_FILE, authors_presets, load_presets
from dus_gym.core.specs import resolve_run_config
from dus_gym.experiments.bench import (
    BenchConfig,
    bench_config_from_args,
    format_bench_table,
    plan_cells,
    results_csv,
    summary_rows,
)
from dus_gym.experiments.cells import run_cell

SMALL = {"task_kwargs": {"n_samples": 300, "dominant_dim": 32, "weak_dim": 8, "hidden_dim": 16},
         "eval_every": 2, "tensorboard": False}


def resolved(method, preset="authors", overrides=None, task="synthetic", flags=None):
    flags = {"learner": {"method": method}, **(flags or {})}
    return from_dict(RunConfig, resolve_run_config(task, flags=flags, overrides=overrides, preset=preset))


def test_every_method_has_an_authors_preset_naming_its_source():
    presets = authors_presets()
    assert set(presets) == set(METHODS.names())
    for method, preset in presets.items():
        assert preset.source and "(" in preset.source, method  # "<repository> <script> (<dataset>)"
        from_dict(LearnerConfig, {**preset.learner, "method": method, "method_kwargs": preset.method_kwargs})
        make_method(method, **preset.method_kwargs)  # every keyword is one the method takes


def test_the_authors_preset_sets_the_learner_the_schedule_and_the_methods_keywords():
    common = resolved("ogm-ge", preset="common")
    assert (common.learner.optimizer, common.learner.lr, common.learner.method_kwargs) == ("sgd", 0.05, {})
    ogm = resolved("ogm-ge")  # OGM-GE main.py: SGD lr 1e-3, StepLR 70 of 100 epochs, alpha 0.8, epochs 0-50
    assert (ogm.learner.optimizer, ogm.learner.lr, ogm.learner.momentum, ogm.learner.weight_decay) == \
        ("sgd", 0.001, 0.9, 1e-4)
    assert (ogm.learner.lr_decay_every, ogm.learner.lr_decay_gamma) == (round(0.7 * ogm.n_iterations), 0.1)
    assert ogm.learner.method_kwargs == {"alpha": 0.8, "start": 0.0, "end": 0.5}
    opm = resolved("opm")  # AdamW, which the learner builds
    assert (opm.learner.optimizer, opm.learner.lr, opm.learner.weight_decay) == ("adamw", 5e-5, 0.01)
    cremad = resolved("pmr", task="cremad")  # the task's own step decay goes: the authors' Adam runs keep the lr
    assert cremad.learner.lr_decay_every is None and cremad.learner.optimizer == "adam"


def test_explicit_values_win_over_the_preset():
    config = resolved("pmr", overrides={"learner": {"lr": 0.02, "lr_decay_every": 7, "method_kwargs": {"alpha": 1.0}}})
    assert (config.learner.optimizer, config.learner.lr, config.learner.lr_decay_every) == ("adam", 0.02, 7)
    assert config.learner.method_kwargs["alpha"] == 1.0 and config.learner.method_kwargs["end"] == 0.55
    flags = resolved("ogm-ge", flags={"n_iterations": 100})  # the schedule follows the budget of the flags
    assert flags.learner.lr_decay_every == 70


def test_bad_presets_are_one_clear_line(tmp_path):
    with pytest.raises(ConfigError, match="preset must be one of"):
        resolved("pmr", preset="author")
    with pytest.raises(ConfigError, match="budget in iterations"):
        resolved("ogm-ge", overrides={"n_iterations": None, "epochs": 2.0})
    bad = tmp_path / "presets.yaml"
    bad.write_text("pmr: {learner: {lr: 0.1}}\n")
    with pytest.raises(ConfigError, match="must name its source"):
        load_presets(bad)
    bad.write_text("pmr: {source: x, learner: {batch_size: 8}}\n")
    with pytest.raises(ConfigError, match="may set"):
        load_presets(bad)
    bad.write_text("pmr: {source: x, schedule: {every: 2, gamma: 0.1}}\n")
    with pytest.raises(ConfigError, match="schedule"):
        load_presets(bad)
    assert PRESET_FILE.is_file()


def test_run_with_preset_authors_builds_the_authors_config():
    args = build_parser("run").parse_args(["run", "--preset", "authors", "--method", "pmr", "--task", "synthetic",
                                      "--iterations", "2", "--set", "learner.weight_decay=0.001"])
    config = new_run_config(args)
    assert (config.learner.method, config.learner.optimizer, config.learner.lr) == ("pmr", "adam", 0.001)
    assert config.learner.weight_decay == 0.001  # --set wins
    assert config.learner.method_kwargs == {"alpha": 2.0, "momentum": 0.0, "start": 0.0, "end": 0.55,
                                            "sample_fraction": 0.1, "proto_lr": None}
    default = new_run_config(build_parser("run").parse_args(["run", "--method", "pmr", "--task", "synthetic"]))
    assert (default.learner.optimizer, default.learner.lr, default.learner.method_kwargs) == ("sgd", 0.05, {})


def test_the_bench_records_the_preset_of_each_cell(tmp_path):
    bench = BenchConfig(tasks=("synthetic",), methods=("mbsd",), samplers=("uniform",), seeds=(0,), n_iterations=2,
                        alone=False, out_dir=str(tmp_path), overrides=SMALL, preset="authors",
                        method_kwargs={"mbsd": {"end": 0.5}})
    (cell,) = plan_cells(bench)
    assert cell.preset == "authors" and cell.config["learner"]["optimizer"] == "adamw"
    assert cell.config["learner"]["method_kwargs"] == {"start": 0.0, "end": 0.5}  # --method-kwargs win
    record = run_cell(cell, str(tmp_path / "cells"))  # 2 iterations with AdamW
    assert record["preset"] == "authors"
    (line,) = csv.DictReader(io.StringIO(results_csv([record])))
    assert line["preset"] == "authors" and line["method"] == "mbsd"
    table = format_bench_table(summary_rows([record], {}))
    header, _, row = [r for r in table.splitlines() if r.startswith("|")][:3]
    assert header.split("|")[3].strip() == "preset" and row.split("|")[3].strip() == "authors"
    args = build_parser("bench").parse_args(["bench", "--preset", "authors", "--tasks", "synthetic"])
    assert args.preset == "authors" and bench_config_from_args({"preset": args.preset}).preset == "authors"
    with pytest.raises(ConfigError, match="preset must be one of"):
        BenchConfig(tasks=("synthetic",), preset="mine")
