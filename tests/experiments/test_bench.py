"""``dus-gym bench``: every cell runs once (in parallel), results are resumable, files are complete."""

import csv
import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from dus_gym.cli import main
from dus_gym.core.config import ConfigError
from dus_gym.experiments.bench import README_END, README_START, BenchConfig, run_bench, write_readme_block
from dus_gym.experiments.results import readme_markers

SMALL = {"task_kwargs": {"n_samples": 300, "dominant_dim": 32, "weak_dim": 8, "hidden_dim": 16},
         "eval_every": 15, "learner": {"batch_size": 16}, "flops_every": 10}


@pytest.fixture(scope="module")
def bench_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    config = BenchConfig(tasks=("synthetic",), methods=("unimodal-aux", "ogm-ge"), samplers=("uniform", "heuristic"),
                         seeds=(0, 1), n_iterations=30, workers=2, out_dir=str(out), overrides=SMALL)
    return config, run_bench(config, progress=False)


def test_bench_runs_every_cell_and_writes_csv_table_and_plots(bench_out):
    config, summary = bench_out
    assert summary["cells"] == 2 * 2 * 2 + 2 * 2 and summary["ran"] == 12 and summary["workers"] == 2
    out = config.out_dir
    rows = list(csv.DictReader(io.StringIO(open(f"{out}/results.csv").read())))
    assert len(rows) == 12
    trained = [r for r in rows if r["method"] != "alone"]
    assert {(r["method"], r["sampler"]) for r in trained} == {(m, s) for m in config.methods for s in config.samplers}
    assert all(0.0 <= float(r["fused_acc"]) <= 1.0 and r["iterations"] == "30" for r in trained)
    heuristic = [r for r in trained if r["sampler"] == "heuristic"]
    assert any(float(r["mean_count_weak"]) != 16.0 for r in heuristic)  # the sampler acted
    table = open(f"{out}/table.md").read()
    assert table == summary["table"] + "\n"
    for label in ("| unimodal-aux | uniform |", "| ogm-ge | heuristic |", "| alone (dominant) |",
                  "| late fusion | alone models |"):
        assert label in table
    for name in ("accuracy.png", "curves-synthetic.png"):
        data = open(f"{out}/{name}", "rb").read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_bench_resumes_and_reruns_only_what_changed(bench_out):
    config, first = bench_out
    again = run_bench(config, progress=False)
    assert again["ran"] == 0 and again["table"] == first["table"]
    cells = Path(config.out_dir) / "cells"
    victim = cells / "synthetic_ogm-ge_heuristic_seed1.json"
    record = json.loads(victim.read_text())
    victim.unlink()  # an interrupted cell: its JSON (written last) is missing
    resumed = run_bench(config, progress=False)
    assert resumed["ran"] == 1
    assert json.loads(victim.read_text())["summary"]["test"] == record["summary"]["test"]  # same seed, same run


def test_bench_validates_before_running(tmp_path):
    with pytest.raises(ConfigError, match="unknown method 'ogm'"):
        BenchConfig(methods=("ogm",))
    with pytest.raises(ConfigError, match="ppo sampler needs --policy"):
        BenchConfig(samplers=("uniform", "ppo"))
    assert main(["bench", "--tasks", "synthetic", "--samplers", "uniform", "--methods", "mla", "--set",
                 "learner.lr=-1", "--out", str(tmp_path)]) == 2
    assert not (tmp_path / "cells").exists()  # nothing ran


def test_readme_block_is_replaced_by_the_table(bench_out, tmp_path):
    config, summary = bench_out
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{README_START}\nold\n{README_END}\n\nafter\n")
    write_readme_block(readme, config, summary, "dus-gym bench --x")
    text = readme.read_text()
    assert "old" not in text and summary["table"] in text and text.endswith("\n\nafter\n")
    assert "`dus-gym bench --x`" in text
    # the authors preset's bench fills its own block of the same page, leaving the common one as it is
    start, end = readme_markers("bench-authors")
    readme.write_text(text + f"{start}\nold\n{end}\n")
    write_readme_block(readme, replace(config, preset="authors"), {"table": "| authors table |"}, "dus-gym bench -p")
    assert readme.read_text().startswith(text) and "| authors table |" in readme.read_text()


def test_a_diverged_cell_is_counted_not_fatal(tmp_path):
    config = BenchConfig(tasks=("synthetic",), methods=("unimodal-aux",), samplers=("uniform", "heuristic"),
                         seeds=(0, 1), n_iterations=20, workers=1, out_dir=str(tmp_path), alone=False,
                         overrides={**SMALL, "learner": {"batch_size": 16, "lr": 1e30}})
    summary = run_bench(config, progress=False)  # every run's loss becomes NaN
    assert summary["ran"] == 4
    assert "| unimodal-aux | uniform | common | — | — |" in summary["table"] and "0 (+2 diverged)" in summary["table"]
    rows = list(csv.DictReader(io.StringIO((tmp_path / "results.csv").read_text())))
    assert len(rows) == 4 and all("loss became" in r["diverged"] and r["fused_acc"] == "" for r in rows)
    assert run_bench(config, progress=False)["ran"] == 0  # a diverged cell is a finished cell


def test_readme_is_checked_before_any_run_and_method_kwargs_go_to_their_method(tmp_path, capsys):
    readme = tmp_path / "NOTES.md"
    readme.write_text("no markers here\n")
    argv = ["bench", "--tasks", "synthetic", "--methods", "ogm-ge", "mla", "--seeds", "0", "--out",
            str(tmp_path / "b"), "--readme", str(readme), "--method-kwargs", "ogm-ge.alpha=0.5"]
    assert main(argv) == 2
    assert "has no '<!-- bench:start -->'" in capsys.readouterr().err and not (tmp_path / "b").exists()
    from dus_gym.experiments.bench import plan_cells

    cells = plan_cells(BenchConfig(tasks=("synthetic",), methods=("ogm-ge", "mla"), seeds=(0,), alone=False,
                                   method_kwargs={"ogm-ge": {"alpha": 0.5}}))
    kwargs = {c.method: c.config["learner"]["method_kwargs"] for c in cells}
    assert kwargs == {"ogm-ge": {"alpha": 0.5}, "mla": {}}


def test_paired_differences_use_the_seeds_both_rows_have():
    from dus_gym.experiments.bench import format_delta, paired_difference, summary_rows

    def record(method, sampler, seed, acc, diverged=None):
        summary = {"modalities": ["a", "b"], "test": {"fused": {"acc": acc, "f1": acc}, "a": {"acc": 0.5, "f1": 0.5},
                                                      "b": {"acc": 0.4, "f1": 0.4}},
                   "final_gap": 0.1, "iterations": 10, "samples_seen": {"a": 100 * seed, "b": 50}, "epochs": 1.5,
                   "optimizer_steps": 20 if method == "mla" else 10, "flops_per_iteration": 2e6,
                   "shapley": {"a": 0.3, "b": 0.1}, "train_seconds": 1.0}
        return {"key": f"{method}/{sampler}/{seed}", "task": "t", "method": method, "sampler": sampler, "seed": seed,
                "alone": None, "summary": summary if diverged is None else {"modalities": ["a", "b"]},
                "diverged": diverged}

    records = [record("mla", "uniform", 0, 0.70), record("mla", "uniform", 1, 0.72), record("mla", "uniform", 2, 0.71),
               record("mla", "heuristic", 0, 0.75), record("mla", "heuristic", 1, 0.0, diverged="nan"),
               record("mla", "heuristic", 2, 0.78)]
    rows = summary_rows(records, {})
    heuristic = next(r for r in rows if r["sampler"] == "heuristic")
    # seeds 0 and 2 only (seed 1 diverged): differences 0.05 and 0.07
    assert heuristic["delta"]["uniform"] == pytest.approx(paired_difference([0, 2], [0.75, 0.78], [0, 1, 2],
                                                                             [0.70, 0.72, 0.71]))
    assert heuristic["delta"]["uniform"][0] == pytest.approx(0.06) and heuristic["diverged"] == 1
    uniform = next(r for r in rows if r["sampler"] == "uniform")
    assert uniform["delta"]["heuristic"][0] == pytest.approx(-0.06) and "uniform" not in uniform["delta"]
    assert "dus" not in uniform["delta"]  # no unimodal-aux + heuristic row: no DUS column entry
    # every row of the task meets DUS (unimodal-aux with the heuristic) on the seeds both have
    dus = [record("unimodal-aux", "heuristic", 0, 0.80), record("unimodal-aux", "heuristic", 2, 0.81)]
    rows = summary_rows(records + dus, {})
    mla = {r["sampler"]: r for r in rows if r["method"] == "mla"}
    assert mla["uniform"]["delta"]["dus"] == pytest.approx(paired_difference([0, 2], [0.70, 0.71], [0, 2],
                                                                              [0.80, 0.81]))
    assert mla["heuristic"]["delta"]["dus"][0] == pytest.approx(-0.04)
    assert "dus" not in next(r for r in rows if r["method"] == "unimodal-aux")["delta"]
    assert format_delta((0.06, 0.01, 0.11)) == "+6.0 [+1.0, +11.0]" and format_delta(None) == "—"
    assert paired_difference([3], [0.5], [0, 1], [0.4, 0.4]) is None


def test_the_balance_column_and_a_cell_recorded_before_it(tmp_path):
    from dus_gym.core.metrics import balance_degree
    from dus_gym.experiments.bench import format_bench_table, results_csv, summary_rows
    from dus_gym.experiments.cells import Cell, load_cell

    def record(method, seed, shapley, with_balance=True):
        summary = {"modalities": ["a", "b"], "test": {"fused": {"acc": 0.7, "f1": 0.7, "map": 0.7},
                                                      "a": {"acc": 0.5, "f1": 0.5}, "b": {"acc": 0.4, "f1": 0.4}},
                   "final_gap": 0.1, "final_cmd": {"a": 0.1, "b": 0.1}, "iterations": 10,
                   "samples_seen": {"a": 100, "b": 50}, "mean_counts": {"a": 10.0, "b": 5.0}, "epochs": 1.5,
                   "optimizer_steps": 10, "flops_per_iteration": 2e6, "shapley": shapley, "train_seconds": 1.0}
        if with_balance:
            summary["balance"] = balance_degree(shapley)
        return {"key": f"{method}/uniform/{seed}", "task": "t", "method": method, "sampler": "uniform",
                "seed": seed, "alone": None, "config": {"seed": seed}, "summary": summary, "diverged": None}

    # a cell recorded before the balance field existed still loads (it is not run again)
    old = record("mla", 0, {"a": 0.3, "b": 0.1}, with_balance=False)
    cell = Cell(old["key"], "t", "mla", "uniform", 0, {"seed": 0})
    (tmp_path / f"{cell.file_stem}.json").write_text(json.dumps(old))
    np.savez(tmp_path / f"{cell.file_stem}.npz", counts=np.zeros((1, 2)), cmd=np.zeros((1, 2)))
    assert load_cell(cell, tmp_path) == old
    records = [old, record("mla", 1, {"a": 0.3, "b": 0.1}, with_balance=False),
               record("joint", 0, {"a": 0.3, "b": 0.1}), record("joint", 1, {"a": 0.2, "b": 0.2})]  # 0.5 and 1.0
    table = format_bench_table(summary_rows(records, {}))
    header = next(line for line in table.splitlines() if line.startswith("| method"))
    names = [c.strip() for c in header.strip("|").split("|")]
    assert names.index("balance") == names.index("Shapley b") + 1
    balance = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")][names.index("balance")]
               for line in table.splitlines() if line.startswith(("| joint", "| mla"))}
    assert balance == {"joint": "0.75 ± 0.35", "mla": "—"}
    rows = list(csv.DictReader(io.StringIO(results_csv(records))))
    assert [r["balance"] for r in rows[:2]] == ["", ""]  # an old record has none
    assert [float(r["balance"]) for r in rows[2:]] == pytest.approx([0.5, 1.0])


def test_the_table_shows_the_cost_beside_the_accuracy(bench_out):
    _, summary = bench_out
    header = next(line for line in summary["table"].splitlines() if line.startswith("| method"))
    for column in ("Shapley dominant", "Δ vs uniform [95% CI]", "Δ vs heuristic [95% CI]", "Δ vs DUS [95% CI]",
                   "samples dominant",
                   "samples weak", "epochs", "steps", "MFLOP/iter", "wall s"):
        assert column in header
    row = next(line for line in summary["table"].splitlines() if line.startswith("| unimodal-aux | uniform"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    names = [c.strip() for c in header.strip("|").split("|")]
    assert cells[names.index("samples dominant")] == "480" and cells[names.index("steps")] == "30"  # 30 x 16
    assert cells[names.index("epochs")] == "2.7" and float(cells[names.index("MFLOP/iter")]) > 0  # 480 / 180 rows


def test_bench_overrides_win_over_the_sampler_file_and_reach_only_the_samplers_that_take_them():
    from dus_gym.experiments.bench import bench_config_from_args, plan_cells

    bench = bench_config_from_args({"tasks": ["synthetic"], "methods": ["joint"], "samplers": ["uniform", "heuristic"],
                                    "seeds": [0], "overrides": {"sampler_kwargs": {"alpha": 5},
                                                                "task_kwargs": {"hidden_dim": 4}}})
    kwargs = {(c.sampler, c.alone): c.config["sampler_kwargs"] for c in plan_cells(bench)}
    assert kwargs[("heuristic", None)]["alpha"] == 5  # agents/heuristic.yml says 10
    assert kwargs[("uniform", None)] == {}
    assert kwargs[("dominant", "dominant")] == {"counts": [64, 0]}


@pytest.mark.parametrize("damage", ["truncated npz", "npz of garbage", "record without summary", "summary without test",
                                    "record of a list"])
def test_a_damaged_bench_cell_is_run_again(damage, tmp_path):
    from dus_gym.experiments.bench import bench_config_from_args, run_bench

    bench = bench_config_from_args({"tasks": ["synthetic"], "methods": ["joint"], "samplers": ["uniform"],
                                    "seeds": [0], "n_iterations": 2, "alone": False, "workers": 1,
                                    "out_dir": str(tmp_path), "overrides": {"task_kwargs": {"hidden_dim": 4}}})
    assert run_bench(bench, progress=False)["ran"] == 1
    cell = tmp_path / "cells" / "synthetic_joint_uniform_seed0"
    npz, record = cell.with_suffix(".npz"), cell.with_suffix(".json")
    if damage == "truncated npz":
        npz.write_bytes(npz.read_bytes()[:40])
    elif damage == "npz of garbage":
        npz.write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    elif damage == "record of a list":
        record.write_text("[1, 2]")
    else:
        data = json.loads(record.read_text())
        if damage == "record without summary":
            del data["summary"]
        else:
            del data["summary"]["test"]
        record.write_text(json.dumps(data))
    summary = run_bench(bench, progress=False)
    assert summary["ran"] == 1 and "joint" in summary["table"]
    assert run_bench(bench, progress=False)["ran"] == 0  # repaired
