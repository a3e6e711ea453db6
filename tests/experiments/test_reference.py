"""Reference agents: the inverse action map, the observation decoded, the reference command and its scores."""

import json

import numpy as np
import pytest

from dus_gym.cli import main
from dus_gym.core.discrepancy import CMDMonitor
from dus_gym.core.observation import ObservationLayout
from dus_gym.experiments.reference import normalised_scores
from dus_gym.samplers.action import CountsAction, allocate

TINY = ["n_iterations=20", "iterations_per_step=10", "task_kwargs={n_samples: 300, hidden_dim: 8}"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def test_to_action_inverts_to_counts():
    box = CountsAction(2)
    for n in range(8, 257):
        assert box.to_counts(box.to_action([n, 264 - n])).tolist() == [n, 264 - n]
    assert box.to_action([300, 0]).tolist() == [1.0, -1.0]  # out of range: the nearest action
    multi = CountsAction(2, action_type="multidiscrete")
    for level in multi.count_levels:
        assert multi.to_counts(multi.to_action([level, 8])).tolist() == [level, 8]
    assert multi.to_action([100, 20]).tolist() == [4, 1]  # nearest levels 128 and 16
    alloc = CountsAction(3, action_type="allocation", n_slots=4)
    for weights in ([1, 1, 1], [1, 3, 6], [0.2, 0.1, 0.7]):
        counts = allocate(weights, alloc.total, alloc.n_min)
        action = alloc.to_action(counts)
        assert action.shape == (4,) and action[3] == 0 and action.max() == pytest.approx(1.0)
        assert alloc.to_counts(action).tolist() == counts.tolist()


def test_decode_reads_back_what_build_wrote():
    monitor = CMDMonitor(2)
    monitor.update(np.array([0.8, 0.4]))
    monitor.update(np.array([0.6, 0.2]))
    for kind, slots in (("cmd", None), ("modalities", 3)):
        layout = ObservationLayout(kind, 2, 64, 256, slots)
        obs = layout.build(monitor, np.array([8, 192]), 0.25, np.array([0.5, 0.3]), 0.6)
        state = layout.decode(obs)
        np.testing.assert_allclose(state["cumulative"], [0.7, 0.3], atol=1e-6)
        np.testing.assert_allclose(state["discrepancy"], [0.2, -0.2], atol=1e-6)
        np.testing.assert_allclose(state["status"], [0.6, 0.2], atol=1e-6)
        assert state["counts"].tolist() == [8, 192] and state["progress"] == 0.25


def test_reference_command_writes_scores_that_match_a_hand_computation(tmp_path, capsys):
    readme = tmp_path / "reference.md"
    readme.write_text("# x\n<!-- reference-Synthetic-v0:start -->\n<!-- reference-Synthetic-v0:end -->\n")
    code = main(["reference", "--env", "dus_gym/Synthetic-v0", "--seeds", "0", "1", "--run-dir", str(tmp_path),
                 "--readme", str(readme), "--no-progress", "--env-kwargs", *TINY])
    assert code == 0
    record = json.loads(next(tmp_path.glob("reference-Synthetic-v0-*/reference.json")).read_text())
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


def test_normalised_scores_by_hand():
    returns = {"uniform": [1.0, 1.2, 1.1], "constant[16,128]": [1.5, 1.8, 1.6], "constant[128,64]": [0.9, 1.0, 1.0],
               "heuristic": [1.4, 1.5, 1.5]}
    s = normalised_scores(returns)
    # best constant 16,128: mean 1.6333 vs uniform 1.1; paired gains 0.5, 0.6, 0.5: mean 0.5333, sd 0.0577,
    # t(0.975, 2) = 4.3027: interval 0.5333 -+ 0.1434 = [0.390, 0.677], above zero
    assert s.best == "constant[16,128]" and s.defined
    assert s.gain[1] == pytest.approx(0.5333333 - 4.302653 * 0.0577350 / np.sqrt(3), abs=1e-5)
    assert s.scores["uniform"] == 0 and s.scores["constant[16,128]"] == pytest.approx(1.0)
    assert s.scores["heuristic"] == pytest.approx((1.4666667 - 1.1) / (1.6333333 - 1.1))
    assert s.scores["constant[128,64]"] == pytest.approx((0.9666667 - 1.1) / 0.5333333)
    noisy = normalised_scores({"uniform": [1.0, 1.2, 1.1], "constant[16,128]": [1.3, 1.0, 1.1]})  # gain +0.033 +- ...
    assert noisy.best == "constant[16,128]" and not noisy.defined and np.isnan(noisy.scores["uniform"])


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


def test_strength_reference_agents_are_the_rules_they_name():
    import gymnasium as gym

    from dus_gym.experiments.reference import SamplerAgent
    from dus_gym.samplers.rules import ConstantSampler, HeuristicSampler, UniformSampler

    env = gym.make("dus_gym/SyntheticFamily-v1", n_iterations=20, iterations_per_step=10,
                   task_kwargs={"n_samples": 300, "hidden_dim": 8}).unwrapped
    obs, _ = env.reset(seed=0)
    assert SamplerAgent(env, UniformSampler(32, env.n_modalities)).act(obs).tolist() == [-1.0]
    heuristic = HeuristicSampler(32, env.n_modalities, alpha=15.0, allocation=True, n_min=4)
    assert env.actions.alpha(SamplerAgent(env, heuristic).act(obs)) == pytest.approx(15.0)
    with pytest.raises(ValueError, match="no strength action"):
        SamplerAgent(env, ConstantSampler(32, env.n_modalities, [32] * env.n_modalities)).act(obs)
