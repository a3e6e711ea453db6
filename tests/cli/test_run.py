import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dus_gym.cli import main

FAST = ["--iterations", "40", "--no-progress", "--set", "eval_every=20", "--set", "task_kwargs.hidden_dim=16"]


def only(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    assert len(found) == 1, found
    return found[0]


def test_run_with_a_method_records_it(tmp_path, capsys):
    assert main(["run", "--task", "synthetic", "--method", "ogm-ge", "--sampler", "heuristic", "--run-dir",
                 str(tmp_path), *FAST]) == 0
    folder = only(tmp_path, "synthetic-ogm-ge-heuristic-seed0-*")
    assert json.loads((folder / "results.json").read_text())["method"] == "ogm-ge"
    assert yaml.safe_load((folder / "config.yaml").read_text())["learner"]["method"] == "ogm-ge"
    assert "/ ogm-ge / heuristic /" in capsys.readouterr().out
    assert main(["run", "--task", "synthetic", "--method", "pareto", "--run-dir", str(tmp_path), *FAST]) == 2
    assert "unknown method 'pareto' (did you mean 'mmpareto'?)" in capsys.readouterr().err


def test_run_end_to_end_writes_config_results_and_tensorboard(tmp_path, capsys):
    code = main(["run", "--task", "synthetic", "--sampler", "heuristic", "--seed", "3", "--run-dir", str(tmp_path),
                 "--set", "sampler_kwargs.alpha=20", *FAST])
    assert code == 0
    folder = only(tmp_path, "synthetic-heuristic-seed3-*")
    results = json.loads((folder / "results.json").read_text())
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert results["iterations"] == 40 and results["seed"] == 3 and results["sampler"] == "heuristic"
    assert config["sampler_kwargs"]["alpha"] == 20 and config["task_kwargs"]["dominant_dim"] == 1024
    assert sum(results["samples_seen"].values()) > 0 and 0 <= results["test"]["fused"]["acc"] <= 1
    assert [p["iteration"] for p in results["val_curve"]] == [20, 40]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("imbalance/cmd/dominant", "imbalance/cmd/weak", "sampler/count/weak", "learner/loss",
                "val/fused_acc", "val/acc/weak"):
        assert tag in tags
    counts = [e.value for e in events.Scalars("sampler/count/dominant")]
    assert len(counts) == 4 and min(counts) < 64  # the heuristic starved the dominant modality
    assert "fused test acc" in capsys.readouterr().out


def test_epochs_convert_at_base_batch_size(tmp_path):
    code = main(["run", "--task", "mfeat", "--epochs", "2", "--run-dir", str(tmp_path), "--no-progress",
                 "--set", "learner.batch_size=100", "--set", "task_kwargs.pix_encoder=mlp"])
    assert code == 0
    results = json.loads(only(tmp_path, "mfeat-uniform-seed0-*/results.json").read_text())
    assert results["iterations"] == 24  # ceil(2 * 1200 / 100)


def test_compare_table_with_paired_difference(tmp_path, capsys):
    code = main(["compare", "--task", "synthetic", "--seeds", "0", "1", "--run-dir", str(tmp_path), *FAST])
    assert code == 0
    out = capsys.readouterr().out
    record = json.loads(only(tmp_path, "compare-synthetic-*/compare.json").read_text())
    assert set(record["runs"]) == {"uniform", "heuristic", "alone:dominant", "alone:weak"}
    assert [r["seed"] for r in record["runs"]["heuristic"]] == [0, 1]
    assert len(record["late_fusion_acc"]) == 2
    assert record["runs"]["alone:weak"][0]["samples_seen"]["dominant"] == 0
    table = record["table"]
    assert table in out and "Δ fused vs uniform" in table and "late fusion" in table
    header = table.splitlines()[0]
    for column in ("Δ fused vs heuristic [95% CI]", "samples dominant", "epochs", "steps", "MFLOP/iter", "wall s",
                   "Shapley weak"):
        assert column in header
    names = [c.strip() for c in header.strip("|").split("|")]
    heuristic_row = next(line for line in table.splitlines() if line.startswith("| heuristic"))
    uniform_row = [c.strip() for c in next(line for line in table.splitlines()
                                           if line.startswith("| uniform")).strip("|").split("|")]
    assert "[" in heuristic_row and "±" in heuristic_row
    assert uniform_row[names.index("Δ fused vs heuristic [95% CI]")].startswith(("+", "-"))
    assert uniform_row[names.index("samples dominant")] == "2560" and uniform_row[names.index("steps")] == "40"


@pytest.mark.parametrize("argv, message", [
    (["run", "--config", "/nonexistent/run.yaml"], "config file not found"),
    (["run", "--set", "sampler=heuristic", "--set", "sampler_kwargs.n_min=300"], "n_min <= n_max"),
    (["compare", "--controls"], "add ppo to the samplers"),
    (["compare", "--controls", "--samplers", "uniform", "ppo", "--policy", "x", "--seeds", "3"],
     "give at least two seeds"),
    (["run", "--method", "ogm-ge", "--set", "learner.fusion=film"], "method 'ogm-ge' is defined for learner.fusion"),
    (["train-policy", "--eval-seeds", "100"], "give at least two seeds"),
])
def test_bad_input_is_one_clear_line(argv, message, capsys, tmp_path):
    assert main([*argv, "--run-dir", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dus-gym: error:") and message in err and len(err.splitlines()) == 1


def test_config_file_and_python_dash_m(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"task": "synthetic", "n_iterations": 10, "eval_every": 10,
                                      "learner": {"lr": 0.01}, "task_kwargs": {"hidden_dim": 8}}))
    proc = subprocess.run([sys.executable, "-m", "dus_gym", "run", "--config", str(config), "--run-dir",
                           str(tmp_path), "--no-progress"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    written = yaml.safe_load(only(tmp_path, "synthetic-uniform-seed0-*/config.yaml").read_text())
    assert written["learner"]["lr"] == 0.01 and written["n_iterations"] == 10


def test_diverged_run_stops_with_one_line_and_writes_no_results(tmp_path, capsys):
    code = main(["run", "--task", "synthetic", "--run-dir", str(tmp_path), "--set", "learner.lr=1e30", *FAST])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "loss became" in err and "lower learner.lr" in err and len(err.splitlines()) == 1
    folder = only(tmp_path, "synthetic-uniform-seed0-*")
    assert (folder / "config.yaml").is_file() and not (folder / "results.json").exists()


def test_compare_writes_its_table_into_a_readme_block(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- compare-synthetic:start -->\nold table\n<!-- compare-synthetic:end -->\nafter\n")
    argv = ["compare", "--task", "synthetic", "--seeds", "0", "--no-alone", "--samplers", "uniform", "--run-dir",
            str(tmp_path), "--readme", str(readme), *FAST]
    assert main(argv) == 0
    record = json.loads(only(tmp_path, "compare-synthetic-*/compare.json").read_text())
    text = readme.read_text()
    assert "old table" not in text and record["table"] in text and text.endswith("\nafter\n")
    assert "<!-- written by `dus-gym compare --task synthetic" in text
    missing = tmp_path / "NOTES.md"
    missing.write_text("no block\n")
    assert main([*argv[:-len(FAST) - 2], "--readme", str(missing), *FAST]) == 2
    assert "has no '<!-- compare-synthetic:start -->'" in capsys.readouterr().err
