"""``dus-gym reference``: the scores written match a hand computation; families; bad input is one line."""

import json

import numpy as np
import pytest

from dus_gym.cli import main

TINY = ["n_iterations=20", "iterations_per_step=10", "task_kwargs={n_samples: 300, hidden_dim: 8}"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def test_reference_command_writes_scores_that_match_a_hand_computation(tmp_path, capsys):
    readme = tmp_path / "reference.md"
    readme.write_text("# x\n<!-- reference-Synthetic-v0:start -->\n<!-- reference-Synthetic-v0:end -->\n")
    code = main(["reference", "--env", "dus_gym/Synthetic-v0", "--seeds", "0", "1", "--run-dir", str(tmp_path),
                 "--readme", str(readme), "--no-progress", "--env-kwargs", *TINY])
    assert code == 0
    record = json.loads(next(tmp_path.glob("reference-Synthetic-v0_*/reference.json")).read_text())
    agents = record["agents"]
    assert set(agents) == {"uniform", "heuristic", "heuristic-replay", "random", "constant[16,128]",
                           "constant[32,128]", "constant[64,128]", "constant[32,96]", "constant[128,64]",
                           "constant[128,32]"}
    for a in agents.values():  # delta weight 1 and terminal weight 1: the return telescopes
        for r, final, initial in zip(a["returns"], a["final_val_acc"], a["initial_val_acc"], strict=True):
            assert r == pytest.approx(2 * final - initial, abs=1e-6)
        assert a["steps"] == [2, 2]
    assert agents["uniform"]["initial_val_acc"] == agents["heuristic"]["initial_val_acc"]  # same seeds, paired
    assert agents["uniform"]["mean_counts"] == [64, 64] and agents["constant[32,96]"]["mean_counts"] == [32, 96]
    np.testing.assert_allclose(agents["heuristic-replay"]["mean_counts"], agents["heuristic"]["mean_counts"])
    mean = {k: np.mean(a["returns"]) for k, a in agents.items()}
    best = max([k for k in mean if k == "uniform" or k.startswith("constant")], key=mean.get)
    assert record["best_constant"] == best
    if record["score_defined"]:
        for k, a in agents.items():
            assert a["normalised_score"] == pytest.approx((mean[k] - mean["uniform"]) / (mean[best] - mean["uniform"]))
    else:
        assert all(np.isnan(a["normalised_score"]) for a in agents.values())
    text = readme.read_text()
    assert "| uniform |" in text and f"| best-constant = {best} |" in text and "written by `dus-gym reference" in text
    assert "normalised score" in capsys.readouterr().out


def test_reference_episodes_are_cells_run_in_parallel_and_resumed(tmp_path):
    from dus_gym.experiments.reference import run_reference

    kwargs = dict(zip(["n_iterations", "iterations_per_step"], [20, 10], strict=True))
    one = run_reference("dus_gym/Synthetic-v0", [0, 1], kwargs, ["uniform", "heuristic"], tmp_path / "one",
                        progress=False)
    two = run_reference("dus_gym/Synthetic-v0", [0, 1], kwargs, ["uniform", "heuristic"], tmp_path / "two",
                        progress=False, workers=2)
    assert one["table"] == two["table"]  # every episode in its own fresh env: the same, in any process
    cells = tmp_path / "one" / "cells"
    assert sorted(p.name for p in cells.glob("*.json")) == ["heuristic_seed0.json", "heuristic_seed1.json",
                                                            "uniform_seed0.json", "uniform_seed1.json"]
    written = {p.name: p.stat().st_mtime_ns for p in cells.glob("*.json")}
    (cells / "heuristic_seed1.json").write_text("{truncated")  # a damaged record runs again, the others are kept
    again = run_reference("dus_gym/Synthetic-v0", [0, 1], kwargs, ["uniform", "heuristic"], tmp_path / "one",
                          progress=False)
    assert again["table"] == one["table"]
    assert {p.name for p in cells.glob("*.json") if p.stat().st_mtime_ns != written[p.name]} == {"heuristic_seed1.json"}


def test_reference_command_bad_input_is_one_line(tmp_path, capsys):
    assert main(["reference", "--env", "dus_gym/Nope-v0", "--run-dir", str(tmp_path), "--env-kwargs", *TINY]) == 2
    assert "dus-gym: error: " in capsys.readouterr().err
    (tmp_path / "r.md").write_text("no block\n")
    assert main(["reference", "--readme", str(tmp_path / "r.md"), "--run-dir", str(tmp_path)]) == 2
    assert "reference-SyntheticFamily-v1:start" in capsys.readouterr().err
    assert main(["reference", "--seeds", "0", "--agents", "heuristic-replay", "--run-dir", str(tmp_path)]) == 2
    assert "at least 2 seeds" in capsys.readouterr().err
    assert not list(tmp_path.glob("reference-*"))  # nothing half-written


@pytest.mark.parametrize("env_id, kwargs", [
    ("dus_gym/SyntheticFamily-v0", TINY),
    ("dus_gym/SyntheticFamily-v1", TINY),
    ("dus_gym/MFeatFamily-v1", ["n_iterations=20", "iterations_per_step=10"]),
])
def test_reference_agents_act_on_every_instance_of_a_family(env_id, kwargs, tmp_path, capsys):
    seeds = [str(s) for s in range(6)]
    assert main(["reference", "--env", env_id, "--seeds", *seeds, "--run-dir", str(tmp_path), "--no-progress",
                 "--env-kwargs", *kwargs]) == 0
    record = json.loads(next(tmp_path.glob("reference-*/reference.json")).read_text())
    assert set(record["agents"]) == {"uniform", "heuristic", "random"}  # constants and replay: one M per schedule
    assert record["modalities"] == ["slot0", "slot1", "slot2"] and not record["score_defined"]
    for agent in record["agents"].values():
        assert agent["steps"] == [2] * 6
    assert np.isfinite(record["agents"]["uniform"]["mean_counts"][2])  # some seeds drew a 3-modality instance
    assert record["skipped"] == ["heuristic-replay", "constant"]
    assert "heuristic-replay and constant skipped" in capsys.readouterr().out
