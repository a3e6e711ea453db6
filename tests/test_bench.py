"""``dus-gym bench``: every cell runs once (in parallel), results are resumable, files are complete."""

import csv
import io
import json
from pathlib import Path

import pytest

from dus_gym.cli import main
from dus_gym.core.config import ConfigError
from dus_gym.experiments.bench import README_END, README_START, BenchConfig, run_bench, write_readme_block

SMALL = {"task_kwargs": {"n_samples": 300, "dominant_dim": 32, "weak_dim": 8, "hidden_dim": 16},
         "eval_every": 15, "learner": {"batch_size": 16}}


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


def test_a_diverged_cell_is_counted_not_fatal(tmp_path):
    config = BenchConfig(tasks=("synthetic",), methods=("unimodal-aux",), samplers=("uniform", "heuristic"),
                         seeds=(0, 1), n_iterations=20, workers=1, out_dir=str(tmp_path), alone=False,
                         overrides={**SMALL, "learner": {"batch_size": 16, "lr": 1e30}})
    summary = run_bench(config, progress=False)  # every run's loss becomes NaN
    assert summary["ran"] == 4
    assert "| unimodal-aux | uniform | — | — |" in summary["table"] and "0 (+2 diverged)" in summary["table"]
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
