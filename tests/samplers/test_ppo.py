import json

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3 import PPO

from dus_gym.cli import main
from dus_gym.samplers import SamplerState, make_sampler
from dus_gym.samplers.ppo import PolicySampler
from dus_gym.samplers.rules import ScheduleSampler


def state(iteration, n_iterations=100):
    return SamplerState(iteration, n_iterations, 64, np.zeros(2), np.zeros(2), np.zeros(2), np.array([64, 64]),
                        np.zeros(9, dtype=np.float32))


def test_schedule_replays_by_progress(tmp_path):
    sampler = ScheduleSampler(64, 2, schedule=[[8, 100], [16, 90], [32, 80], [64, 70]])
    assert [sampler.counts(state(t)).tolist() for t in (0, 24, 25, 74, 99)] == \
        [[8, 100], [8, 100], [16, 90], [32, 80], [64, 70]]
    np.save(tmp_path / "counts.npy", np.array([[1, 2]] * 3))
    assert make_sampler("schedule", 64, 2, schedule=str(tmp_path / "counts.npy")).counts(state(50)).tolist() == [1, 2]
    with pytest.raises(ValueError, match="table of counts"):
        ScheduleSampler(64, 2, schedule=[[1, 2, 3]])
    with pytest.raises(FileNotFoundError):
        ScheduleSampler(64, 2, schedule=str(tmp_path / "missing.npy"))


def test_saved_policy_folder(tiny_policy):
    _, folder = tiny_policy
    for name in ("policy.zip", "vecnormalize.pkl", "policy.json", "config.yml", "args.yml", "command.txt"):
        assert (folder / name).is_file(), name
    assert list((folder / "checkpoints").glob("ppo_*_steps.zip"))
    settings = json.loads((folder / "policy.json").read_text())
    assert settings["env"]["iterations_per_step"] == 10 and settings["modalities"] == ["dominant", "weak"]
    assert settings["timesteps"] >= 64


def test_policy_drives_a_run_exactly_as_in_the_env(tiny_policy, tmp_path):
    """The ppo sampler's whole rollout in ``dus-gym run`` equals the policy acting in the env on the same learner."""
    _, folder = tiny_policy
    code = main(["run", "--task", "synthetic", "--sampler", "ppo", "--policy", str(folder), "--iterations", "45",
                 "--run-dir", str(tmp_path), "--no-progress", "--set", "eval_every=45"])
    assert code == 0
    run = next(tmp_path.glob("synthetic-ppo-seed0-*"))
    counts = np.load(run / "counts.npy")
    assert counts.shape == (45, 2)
    # the env with the run's budget and K, its episode restarted on the run's learner seed (0)
    model = PPO.load(folder / "policy.zip", device="cpu")
    sampler = PolicySampler(64, 2, policy=str(folder))
    env = gym.make("dus_gym/Synthetic-v0", n_iterations=45, iterations_per_step=10).unwrapped
    env.reset(seed=0)
    env.episodes.start(0, 0)
    env.episodes.evaluate([0])
    obs, chosen, done = env.episodes.observation(0), [], False
    while not done:
        action, _ = model.predict(sampler.normalize(obs), deterministic=True)
        obs, _, terminated, truncated, info = env.step(np.clip(action, -1, 1))
        chosen.append(info["counts"].tolist())
        done = terminated or truncated
    assert len(chosen) == 5  # four steps of K = 10 and a last one of 5
    for step, start in enumerate(range(0, 45, 10)):  # the run held each decision for K iterations
        assert (counts[start : start + 10] == chosen[step]).all(), (step, counts[start], chosen[step])
    assert len({tuple(c) for c in chosen}) > 1  # the policy changed its counts along the rollout
    results = json.loads((run / "results.json").read_text())
    assert results["sampler"] == "ppo" and results["iterations"] == 45


def test_compare_with_policy_and_controls(tiny_policy, tmp_path, capsys):
    _, folder = tiny_policy
    code = main(["compare", "--task", "synthetic", "--samplers", "uniform", "ppo", "--policy", str(folder),
                 "--controls", "--seeds", "0", "1", "--no-alone", "--iterations", "30", "--run-dir", str(tmp_path),
                 "--no-progress", "--set", "eval_every=30"])
    assert code == 0
    record = json.loads(next(tmp_path.glob("compare-synthetic-*/compare.json")).read_text())
    assert set(record["runs"]) == {"uniform", "ppo", "ppo-mean", "ppo-replay"}
    ppo_counts = [np.load(p) for p in sorted(tmp_path.glob("compare-synthetic-*/ppo/seed*/counts.npy"))]
    replay = np.load(next(tmp_path.glob("compare-synthetic-*/ppo-replay/seed0/counts.npy")))
    assert np.array_equal(replay, ppo_counts[1])  # seed 0 replays the schedule chosen on seed 1
    mean = np.load(next(tmp_path.glob("compare-synthetic-*/ppo-mean/seed1/counts.npy")))
    assert (mean == np.rint(np.mean([c.mean(0) for c in ppo_counts], axis=0))).all()
    assert "ppo-replay" in capsys.readouterr().out


def test_policy_mismatch_and_missing(tiny_policy, tmp_path):
    _, folder = tiny_policy
    with pytest.raises(ValueError, match="trained for 2 modalities"):
        PolicySampler(64, 3, policy=str(folder))
    with pytest.raises(ValueError, match="B = 64"):
        PolicySampler(32, 2, policy=str(folder))
    with pytest.raises(FileNotFoundError, match="policy.zip"):
        PolicySampler(64, 2, policy=str(tmp_path))
    assert main(["run", "--sampler", "ppo", "--run-dir", str(tmp_path)]) == 2


def test_unknown_env_id_is_one_line(tmp_path, capsys):
    assert main(["train-policy", "--env", "dus_gym/Synthetc-v0", "--run-dir", str(tmp_path), "--no-evaluate"]) == 2
    err = capsys.readouterr().err.strip()
    assert "did you mean 'dus_gym/Synthetic-v0'" in err and len(err.splitlines()) == 1
    assert not list(tmp_path.iterdir())  # nothing written for a run that cannot start


def test_compare_rows_for_labelled_policies_and_a_compute_fair_heuristic(tiny_policy, tmp_path):
    _, folder = tiny_policy
    code = main(["compare", "--task", "synthetic", "--samplers", "uniform", "heuristic", "--allocation",
                 "--policy", str(folder), "--policy", f"second={folder}", "--seeds", "0", "1", "--no-alone",
                 "--iterations", "20", "--run-dir", str(tmp_path), "--no-progress", "--set", "eval_every=20"])
    assert code == 0
    record = json.loads(next(tmp_path.glob("compare-synthetic-*/compare.json")).read_text())
    assert list(record["runs"]) == ["uniform", "heuristic", "ppo", "second"]
    assert record["runs"]["ppo"][0]["test"] == record["runs"]["second"][0]["test"]  # one policy, two labels
    # the paired difference of ppo to every other row (e.g. a specialist): zero for the same policy
    lines = record["table"].splitlines()
    column = [c.strip() for c in lines[0].split("|")].index("ppo − row [95% CI]")
    cells = {row.split("|")[1].strip(): row.split("|")[column].strip() for row in lines[2:6]}
    assert cells["second"] == "+0.0 [+0.0, +0.0]" and cells["ppo"] == "—"
    gain = np.mean([a["test"]["fused"]["acc"] - b["test"]["fused"]["acc"]
                    for a, b in zip(record["runs"]["ppo"], record["runs"]["uniform"], strict=True)])
    assert cells["uniform"].startswith(f"{100 * gain:+.1f} [")
    heuristic = np.load(next(tmp_path.glob("compare-synthetic-*/heuristic/seed0/counts.npy")))
    assert (heuristic.sum(1) == 2 * 64).all() and heuristic[:, 0].min() < 64  # M x B per iteration, reallocated
