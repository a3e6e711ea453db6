"""dus-gym tune: the heuristic's and PPO's searches, resumable studies, pruning, the written settings."""

import json

import numpy as np
import pytest
import yaml

from dus_gym.agents.hyperparams import load_hyperparams
from dus_gym.cli import main
from dus_gym.core.config import RunConfig, from_dict
from dus_gym.experiments.stats import paired_interval
from tests.conftest import TINY_FAMILY_PPO, TINY_PPO

optuna = pytest.importorskip("optuna", reason="optuna (the tune extra) is not installed")

SMALL = ["--task", "synthetic", "--iterations", "30", "--set", "eval_every=10",
         "--set", "task_kwargs={n_samples: 300, dominant_dim: 32, hidden_dim: 16}"]


def test_tune_heuristic_writes_settings_and_a_paired_comparison(tmp_path, capsys):
    study = tmp_path / "study"
    argv = ["tune", "heuristic", *SMALL, "--trials", "2", "--seeds", "0", "--eval-seeds", "7", "8",
            "--study", str(study), "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Δ tuned vs default" in out and "| uniform | B of every modality |" in out and "| equal |" in out
    tuned = yaml.safe_load((study / "heuristic.yml").read_text())["synthetic"]
    assert set(tuned) == {"alpha", "n_min", "n_max", "warmup"} and 0.3 <= tuned["alpha"] <= 100
    assert 1 <= tuned["n_min"] <= 64 and tuned["n_max"] == 256 and 0 <= tuned["warmup"] <= 30 // 4
    best = from_dict(RunConfig, yaml.safe_load((study / "best.yaml").read_text()))
    assert best.sampler == "heuristic" and best.sampler_kwargs == tuned and best.n_iterations == 30
    record = json.loads((study / "evaluation.json").read_text())
    acc = record["test_acc"]
    d, lo, hi = paired_interval(acc["tuned"], acc["default"])
    assert record["paired_difference"] == {"mean": d, "low": lo, "high": hi} and len(acc["tuned"]) == 2
    for label in ("default", "tuned"):  # each heuristic against uniform sampling on the same seeds
        d, lo, hi = paired_interval(acc[label], acc["uniform"])
        assert record["vs_uniform"][label] == {"mean": d, "low": lo, "high": hi}
    assert record["method"] == "unimodal-aux" and record["search"] == ["alpha", "n_min", "warmup"]
    uniform = record["samples"]["uniform"]  # B = 64 of each modality at each of the 30 iterations
    assert uniform == {"dominant": 64 * 30, "weak": 64 * 30}
    assert record["samples"]["default"] != uniform
    cells = sorted(p.name for p in (study / "cells").glob("*.json"))  # the comparison's runs are cells
    assert cells == ["default_seed7.json", "default_seed8.json", "tuned_seed7.json", "tuned_seed8.json",
                     "uniform_seed7.json", "uniform_seed8.json"]
    default_written = (study / "cells" / "default_seed7.json").stat().st_mtime_ns
    # resumable: the same command with more trials adds only the missing ones; a stale running trial is redone
    stale = optuna.load_study(study_name="synthetic-heuristic", storage=f"sqlite:///{study / 'study.db'}")
    left = stale.ask()  # left RUNNING after drawing its alpha, as by a killed process
    alpha = left.suggest_float("alpha", 0.3, 100.0, log=True)
    assert main([*argv[:argv.index("--trials")], "--trials", "3", *argv[argv.index("--trials") + 2:]]) == 0
    trials = optuna.load_study(study_name="synthetic-heuristic", storage=f"sqlite:///{study / 'study.db'}").trials
    states = [t.state.name for t in trials]
    assert states.count("FAIL") == 1 and states.count("RUNNING") == 0
    assert len([s for s in states if s in ("COMPLETE", "PRUNED")]) == 3
    assert trials[-1].params["alpha"] == alpha  # the stale trial's parameters, queued again
    # the default settings' runs are finished cells of the same config: the second comparison reused them
    assert (study / "cells" / "default_seed7.json").stat().st_mtime_ns == default_written


def test_tune_searches_alpha_alone_and_reports_studies_in_one_table(small_study, tmp_path, capsys):
    study = tmp_path / "alpha"
    argv = ["tune", "heuristic", *SMALL, "--method", "ogm-ge", "--search", "alpha", "--trials", "2", "--seeds", "0",
            "--eval-seeds", "7", "8", "--study", str(study), "--no-progress"]
    assert main(argv) == 0
    tuned = yaml.safe_load((study / "heuristic.yml").read_text())["synthetic"]
    assert (tuned["n_min"], tuned["warmup"]) == (8, 0)  # not searched: the task's settings
    trials = optuna.load_study(study_name="synthetic-heuristic", storage=f"sqlite:///{study / 'study.db'}").trials
    assert all(set(t.params) == {"alpha"} for t in trials)
    # the study of the whole space cannot be resumed as an alpha-only one
    err = _one_line(capsys, [*argv[:-4], "--study", str(small_study), "--no-progress"])
    assert "search None (now ['alpha'])" in err
    page = tmp_path / "page.md"
    page.write_text("# plug-in\n<!-- tune-report:start -->\n<!-- tune-report:end -->\ntext after\n")
    capsys.readouterr()
    assert main(["tune", "report", str(small_study), str(study), "--readme", str(page)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| synthetic")]
    assert [row.split(" | ")[1] for row in rows] == ["unimodal-aux", "ogm-ge"]
    record = json.loads((study / "evaluation.json").read_text())
    assert f"alpha {record['tuned']['alpha']:.4g} |" in rows[1] and "n_min" not in rows[1]  # the searched settings
    assert rows[1].endswith("| 2 |") and "Δ tuned vs uniform" in page.read_text()
    assert page.read_text().endswith("<!-- tune-report:end -->\ntext after\n")


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("{not json", "is not a study's evaluation"),
    ('{"task": "synthetic", "test_acc": {"default": [0.5], "tuned": [0.5]}}', "evaluated without uniform runs"),
])
def test_tune_report_bad_study_is_one_line(content, message, tmp_path, capsys):
    folder = tmp_path / "study"
    folder.mkdir()
    if content is not None:
        (folder / "evaluation.json").write_text(content)
    assert message in _one_line(capsys, ["tune", "report", str(folder)])


def test_tune_search_names_known_settings(capsys, tmp_path):
    err = _one_line(capsys, ["tune", "heuristic", *SMALL, "--search", "alpha", "alpha", "--study", str(tmp_path / "s")])
    assert "search must name some of alpha, n_min, warmup, each once" in err and not (tmp_path / "s").exists()


def test_tune_ppo_on_a_family_env_trains_its_modality_policy(tmp_path):
    # the default env's entry names dus-gym's ModalityPolicy, which SB3 does not know by name
    study, start = tmp_path / "ppo", tmp_path / "start.yml"
    start.write_text(yaml.safe_dump({"dus_gym/SyntheticFamily-v0": TINY_FAMILY_PPO}))
    argv = ["tune", "ppo", "--env", "dus_gym/SyntheticFamily-v0", "-conf", str(start), "--env-kwargs",
            "n_iterations=20", "iterations_per_step=10", "task_kwargs={n_samples: 300, hidden_dim: 8}",
            "--trials", "1", "--trial-timesteps", "8", "--eval-episodes", "1", "--study", str(study), "--no-progress"]
    assert main(argv) == 0
    best = json.loads((study / "best.json").read_text())
    assert best["entry"]["policy"] == "ModalityPolicy" and 0.0 <= best["best_val_acc"] <= 1.0

def test_tune_ppo_writes_a_zoo_entry(tmp_path, capsys):
    study, start = tmp_path / "ppo", tmp_path / "start.yml"
    start.write_text(yaml.safe_dump({"dus_gym/Synthetic-v0": TINY_PPO}))
    argv = ["tune", "ppo", "-conf", str(start), "--env-kwargs", "n_iterations=20", "iterations_per_step=10",
            "task_kwargs={n_samples: 300, dominant_dim: 32, hidden_dim: 16}", "--trials", "1",
            "--trial-timesteps", "8", "--eval-episodes", "1", "--study", str(study), "--no-progress"]
    assert main(argv) == 0
    table = yaml.safe_load((study / "ppo.yml").read_text())
    assert list(table) == ["dus_gym/Synthetic-v0"]
    entry = table["dus_gym/Synthetic-v0"]
    assert entry["n_steps"] in (2, 4, 8) and entry["learning_rate"].startswith("lin_")
    hp = load_hyperparams(study / "ppo.yml", "dus_gym/Synthetic-v0")  # loads as train_policy loads it
    assert hp.n_envs == 1 and hp.model_kwargs["n_steps"] == entry["n_steps"]
    assert entry["n_timesteps"] == TINY_PPO["n_timesteps"]  # tuned on top of the entry it started from
    # the entry carries the env settings it was tuned under: train_policy.py -conf applies it to that env
    assert entry["env_kwargs"] == {"n_iterations": 20, "iterations_per_step": 10,
                                   "task_kwargs": {"n_samples": 300, "dominant_dim": 32, "hidden_dim": 16}}
    assert hp.env_kwargs == entry["env_kwargs"]
    best = json.loads((study / "best.json").read_text())
    assert 0.0 <= best["best_val_acc"] <= 1.0 and best["trials_finished"] == 1
    assert np.isfinite(best["best_val_acc"])


def test_tune_bad_input(tmp_path, capsys):
    assert main(["tune", "heuristic", *SMALL, "--seeds", "1", "--eval-seeds", "1", "--study",
                 str(tmp_path / "s")]) == 2
    assert "held out" in capsys.readouterr().err
    assert main(["tune", "ppo", "--env", "dus_gym/Nope-v0", "--study", str(tmp_path / "p")]) == 2
    assert "dus-gym: error:" in capsys.readouterr().err


@pytest.fixture(scope="module")
def small_study(tmp_path_factory):
    """A heuristic study of one finished trial (seed 0, 30 iterations), copied by each test that damages it."""
    study = tmp_path_factory.mktemp("tune") / "study"
    assert main(["tune", "heuristic", *SMALL, "--trials", "1", "--seeds", "0", "--eval-seeds", "7",
                 "--study", str(study), "--no-progress"]) == 0
    return study


def _one_line(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("dus-gym: error:") and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("target", ["heuristic", "ppo"])
@pytest.mark.parametrize("content, message", [
    (b"these are my notes, not a database\n", "is not an SQLite database"),
    (b"SQLite format 3\x00" + b"\xff" * 200, "is not a readable SQLite database"),
    ("truncated", "SQLite database"),
    ("another database", "is an SQLite database of something else (tables ['notes'])"),
])
def test_a_damaged_or_foreign_study_db_is_one_line_and_left_as_it_is(target, content, message, small_study, capsys,
                                                                    tmp_path):
    import sqlite3

    folder = tmp_path / "study"
    folder.mkdir()
    db = folder / "study.db"
    if content == "truncated":
        db.write_bytes(small_study.joinpath("study.db").read_bytes()[:3000])
    elif content == "another database":
        with sqlite3.connect(db) as connection:
            connection.execute("CREATE TABLE notes (text TEXT)")
            connection.execute("INSERT INTO notes VALUES ('keep me')")
        connection.close()
    else:
        db.write_bytes(content)
    before = db.read_bytes()
    argv = (["tune", "heuristic", *SMALL, "--trials", "1", "--seeds", "0", "--eval-seeds", "7"] if target == "heuristic"
            else ["tune", "ppo", "--env-kwargs", "n_iterations=20", "iterations_per_step=10", "--trials", "1"])
    err = _one_line(capsys, [*argv, "--study", str(folder), "--no-progress"])
    assert message in err and "it is left as it is" in err
    assert db.read_bytes() == before and sorted(p.name for p in folder.iterdir()) == ["study.db"]


@pytest.mark.parametrize("flags, message", [
    (["--seeds", "1"], "seeds [0] (now [1])"),
    (["--seeds", "0", "--iterations", "20"], "n_iterations 30 (now 20)"),
    (["--seeds", "0", "--set", "task_kwargs.n_samples=400"], "task_kwargs"),
    (["--seeds", "0", "--set", "learner.lr=0.5"], "learner"),
])
def test_resuming_a_study_with_other_settings_is_refused(flags, message, small_study, capsys, tmp_path):
    import shutil

    folder = tmp_path / "study"
    shutil.copytree(small_study, folder)
    before = (folder / "study.db").read_bytes()
    small = SMALL[:2] + SMALL[4:] if "--iterations" in flags else SMALL  # the study's own budget is 30
    argv = ["tune", "heuristic", *small, "--trials", "2", "--eval-seeds", "7", *flags, "--study", str(folder),
            "--no-progress"]
    err = _one_line(capsys, argv)
    assert "was run with other settings" in err and message in err and "another --study folder" in err
    assert (folder / "study.db").read_bytes() == before


@pytest.mark.parametrize("target", ["heuristic", "ppo"])
@pytest.mark.parametrize("timeout", ["nan", "inf", "0", "-5"])
def test_tune_timeout_is_a_finite_positive_number(target, timeout, capsys, tmp_path):
    argv = ["tune", "heuristic", *SMALL] if target == "heuristic" else ["tune", "ppo"]
    err = _one_line(capsys, [*argv, "--timeout", timeout, "--study", str(tmp_path / "s"), "--no-progress"])
    assert "timeout a finite number of seconds > 0" in err or "timeout must be a finite number of seconds > 0" in err
    assert not (tmp_path / "s").exists()


def test_tune_ppo_on_a_family_env_with_the_shipped_hyperparameters(tmp_path):
    # agents/ppo.yml normalises nothing on the family envs: VecNormalize then has no observation statistics
    study = tmp_path / "ppo"
    argv = ["tune", "ppo", "--env", "dus_gym/SyntheticFamily-v0", "--env-kwargs", "n_iterations=20",
            "iterations_per_step=10", "task_kwargs={n_samples: 300, hidden_dim: 8}", "--trials", "1",
            "--trial-timesteps", "8", "--eval-episodes", "1", "--study", str(study), "--no-progress"]
    assert main(argv) == 0
    best = json.loads((study / "best.json").read_text())
    assert best["entry"]["normalize"] == "dict(norm_obs=False, norm_reward=False)"
    assert 0.0 <= best["best_val_acc"] <= 1.0


def test_a_diverged_comparison_run_is_counted_and_left_out_of_the_pairs():
    from dus_gym.experiments.tune import accuracy_cell, paired_finished, studies_table

    uniform, default, tuned = [0.70, 0.72, None], [0.80, None, 0.84], [0.81, 0.79, 0.85]
    d, lo, hi = paired_finished(default, uniform)  # seed 0 only: no interval
    assert d == pytest.approx(0.10) and np.isnan(lo) and np.isnan(hi)
    assert paired_finished(tuned, default) == pytest.approx(paired_interval([0.81, 0.85], [0.80, 0.84]))
    assert np.isnan(paired_finished([None], [0.5])[0])
    assert accuracy_cell(default) == "82.0 ± 2.8 (+1 diverged)" and accuracy_cell([None, None]) == "all 2 diverged"
    record = {"task": "synthetic", "method": "mbsd", "search": ["alpha"], "eval_seeds": [0, 1, 2],
              "tuned": {"alpha": 3.0}, "test_acc": {"uniform": uniform, "default": default, "tuned": tuned},
              "vs_uniform": {k: dict(zip(("mean", "low", "high"), paired_finished(v, uniform), strict=True))
                             for k, v in (("default", default), ("tuned", tuned))},
              "paired_difference": dict(zip(("mean", "low", "high"), paired_finished(tuned, default), strict=True)),
              "samples": {"uniform": {"a": 10.0, "b": 10.0}, "default": {"a": 5.0, "b": 20.0}, "tuned": {}}}
    row = studies_table([record]).splitlines()[-1]
    assert "| mbsd | alpha 3 | 71.0 ± 1.4 (+1 diverged) | 82.0 ± 2.8 (+1 diverged) |" in row
    assert "+10.0 (one pair: no interval)" in row and "| 4.0x b | — | 3 |" in row
