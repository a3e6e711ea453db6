"""Task families, the "modalities" observation, the allocation action and the modality-agnostic policy."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3 import PPO
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from dus_gym.agents.policies import ModalityPolicy
from dus_gym.core.config import ConfigError, FamilyConfig
from dus_gym.core.discrepancy import CMDMonitor
from dus_gym.core.observation import GLOBAL_FEATURES, MODALITY_FEATURES, ObservationLayout
from dus_gym.envs.env import DUSEnv
from dus_gym.envs.registration import register_envs
from dus_gym.samplers import make_sampler
from dus_gym.samplers.action import CountsAction, allocate
from dus_gym.samplers.base import SamplerState
from dus_gym.tasks.families import TaskFamily, mfeat_family, synthetic_family

TINY = {"n_iterations": 20, "iterations_per_step": 10, "task_kwargs": {"n_samples": 300, "hidden_dim": 8}}


def family_env(**kwargs) -> DUSEnv:
    return gym.make("dus_gym/SyntheticFamily-v0", **{**TINY, **kwargs}).unwrapped


def test_allocation_spends_exactly_m_times_b():
    assert allocate([1, 1], 128, 8).tolist() == [64, 64]
    assert allocate([0.0, 1.0], 128, 8).tolist() == [8, 120]
    assert allocate([1, 1, 1], 100, 4).tolist() == [34, 33, 33]  # the remainder goes by largest share, ties first
    rng = np.random.default_rng(0)
    for _ in range(200):
        w, M = rng.dirichlet(np.ones(3)), 3
        counts = allocate(w, M * 32, 4)
        assert counts.sum() == 96 and counts.min() >= 4
    with pytest.raises(ValueError, match="n_min"):
        allocate([1, 1], 10, 8)
    action = CountsAction(2, n_min=8, action_type="allocation", batch_size=64, temperature=3.0, n_slots=3)
    assert action.space.shape == (3,)
    assert action.to_counts([0.0, 0.0, 0.7]).tolist() == [64, 64]  # the third slot is padding: ignored
    w = np.exp(3.0 * np.array([-1.0, 1.0]))
    assert action.to_counts([-1.0, 1.0, 0.0]).tolist() == allocate(w, 128, 8).tolist()
    assert action.max_count == 120


def test_heuristic_allocation_splits_m_times_b_by_its_softmax():
    sampler = make_sampler("heuristic", 32, 3, alpha=10.0, n_min=4, allocation=True)
    d = np.array([0.1, -0.05, -0.05])
    state = SamplerState(50, 100, 32, d + 0.5, d, d, np.array([32, 32, 32]), np.zeros(13, np.float32))
    counts = sampler.counts(state)
    w = np.exp(-10 * d) / np.exp(-10 * d).sum()
    assert counts.sum() == 96 and counts.tolist() == allocate(w, 96, 4).tolist() and counts[0] < counts[1]


def test_family_split_and_instances():
    family = TaskFamily.from_config("synthetic", {"hidden_dim": 8},
                                    FamilyConfig(generator="synthetic", generator_kwargs={"n_instances": 40}))
    assert len(family.held_out) == 10 and set(family.held_out).isdisjoint(family.train)
    assert sorted([*family.held_out, *family.train]) == list(range(40))
    again = TaskFamily.from_config("synthetic", {}, FamilyConfig(generator="synthetic",
                                                                 generator_kwargs={"n_instances": 40}))
    assert again.held_out == family.held_out and again.instances == family.instances  # fixed, documented split
    assert family.task_kwargs(3)["hidden_dim"] == 8 and family.task_kwargs(3)["data_seed"] == family.instances[3][
        "data_seed"]
    draws = synthetic_family(200, seed=1)
    assert {d["n_weak"] for d in draws} == {1, 2} and {d["dominant_slot"] for d in draws} == {0, 1, 2}
    assert 0.2 < np.mean([d["dominant_fine_signal"] > 0 for d in draws]) < 0.5  # harmless instances exist
    views = mfeat_family()
    assert len(views) == 30 + 120 and {"views": ["fou", "pix"]} in views and {"views": ["pix", "fou"]} in views


def test_family_env_draws_training_instances_and_reset_options_choose_any():
    env = family_env()
    seen = set()
    for seed in range(25):
        _, info = env.reset(seed=seed)
        seen.add(info["instance"])
        assert not info["held_out"] and info["instance_params"] == env.family.instances[info["instance"]]
    assert seen <= set(env.family.train) and len(seen) > 15
    held = env.family.held_out[0]
    obs, info = env.reset(seed=0, options={"instance": held})
    assert info["instance"] == held and info["held_out"]
    M = env.family.instances[held]["n_weak"] + 1
    mask = obs[: 3 * len(MODALITY_FEATURES)].reshape(3, -1)[:, MODALITY_FEATURES.index("mask")]
    assert mask.tolist() == [1.0] * M + [0.0] * (3 - M)
    _, _, _, _, step_info = env.step(np.zeros(3, np.float32))
    assert step_info["instance"] == held and step_info["counts"].sum() == M * env.learner_config.batch_size


@pytest.mark.parametrize("env_id", ["dus_gym/SyntheticFamily-v0", "dus_gym/MFeatFamily-v1"])
def test_family_env_passes_both_checkers(env_id):
    small = TINY if env_id == "dus_gym/SyntheticFamily-v0" else {"n_iterations": 20, "iterations_per_step": 10}
    env = gym.make(env_id, **small).unwrapped
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gym_check_env(env, skip_render_check=True)
        sb3_check_env(env, warn=True)
    assert not [w for w in caught if "dus_gym" in str(w.filename) or "precision" in str(w.message)]


def test_a_user_family_from_a_list_and_a_bad_one(tmp_path):
    spec = {"env_id": "dus_gym/TinyFamily-v0", "task": "synthetic", "task_kwargs": {"n_samples": 300, "hidden_dim": 8},
            "family": {"instances": [{"dominant_slot": 0}, {"dominant_slot": 1}, {"n_weak": 2, "dominant_slot": 2}],
                       "held_out": 0.34},
            "n_iterations": 20, "env": {"iterations_per_step": 10, "action_type": "allocation",
                                        "observation": "modalities", "max_modalities": 3}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(spec))
    assert register_envs(tmp_path) == ["dus_gym/TinyFamily-v0"]
    env = gym.make("dus_gym/TinyFamily-v0").unwrapped
    assert len(env.family.held_out) == 1 and len(env.family.train) == 2
    with pytest.raises(ConfigError, match="observation 'modalities'"):
        gym.make("dus_gym/TinyFamily-v0", observation="cmd")


def test_modalities_observation_by_hand():
    monitor = CMDMonitor(2)
    monitor.update([0.8, 0.4])
    layout = ObservationLayout("modalities", 2, 32, 120, n_slots=3)
    obs = layout.build(monitor, np.array([16, 48]), 0.25, np.array([0.5, 0.35]), 0.6)
    rows = obs[:24].reshape(3, 8)
    assert rows[0].tolist() == pytest.approx([0.8, 0.2, 1.0, 0.8, 0.5, 0.3, 0.5, 1.0])
    assert rows[1].tolist() == pytest.approx([0.4, -0.2, -1.0, 0.4, 0.35, 0.05, 1.5, 1.0])
    assert rows[2].tolist() == [0.0] * 8 and obs[24:].tolist() == pytest.approx([0.25, 0.6])
    blind = ObservationLayout("modalities", 2, 32, 120, n_slots=3, blind=True)
    b = blind.build(monitor, np.array([16, 48]), 0.25, np.array([0.5, 0.35]), 0.6)
    assert b[:24].reshape(3, 8)[:, :7].max() == 0.0 and b[24:].tolist() == [0.25, 0.0]
    assert len(obs) == layout.size == 3 * len(MODALITY_FEATURES) + len(GLOBAL_FEATURES)


@pytest.fixture(scope="module")
def policy():
    env = family_env()
    return PPO(ModalityPolicy, env, n_steps=8, batch_size=8, device="cpu", seed=0,
               policy_kwargs={"hidden": 16, "ortho_init": False}).policy


def _actions(policy, obs):
    with torch.no_grad():
        o = torch.as_tensor(np.asarray(obs, np.float32))
        return policy.get_distribution(o).distribution.mean.numpy(), policy.predict_values(o).numpy()


def test_policy_is_equivariant_to_modality_order_and_blind_to_padding(policy):
    rng = np.random.default_rng(0)
    rows = rng.uniform(-1, 1, size=(5, 3, len(MODALITY_FEATURES)))
    rows[..., -1] = 1.0
    rows[:, 2, -1] = 0.0  # the third slot is padding
    g = rng.uniform(0, 1, size=(5, len(GLOBAL_FEATURES)))
    obs = np.concatenate([rows.reshape(5, -1), g], 1)
    actions, values = _actions(policy, obs)
    swapped = np.concatenate([rows[:, [1, 0, 2]].reshape(5, -1), g], 1)
    a2, v2 = _actions(policy, swapped)
    np.testing.assert_allclose(a2[:, [1, 0]], actions[:, :2], atol=1e-6)  # permuting modalities permutes actions
    np.testing.assert_allclose(v2, values, atol=1e-6)
    noisy = rows.copy()
    noisy[:, 2, :-1] = rng.uniform(-1, 1, size=(5, len(MODALITY_FEATURES) - 1))  # garbage in the padded slot
    a3, v3 = _actions(policy, np.concatenate([noisy.reshape(5, -1), g], 1))
    np.testing.assert_allclose(a3[:, :2], actions[:, :2], atol=1e-6)
    np.testing.assert_allclose(v3, values, atol=1e-6)
    assert np.abs(actions[:, 0] - actions[:, 1]).max() > 1e-4  # and the actions do depend on the rows
    assert policy.log_std.shape == (1,)


def test_a_family_policy_drives_runs_of_two_and_three_modalities(tiny_family_policy, tmp_path):
    import json

    from dus_gym.cli import main

    _, folder = tiny_family_policy
    settings = json.loads((folder / "policy.json").read_text())
    assert settings["family"] and settings["env"]["observation"] == "modalities"
    for n_weak in (1, 2):  # M = 2 and 3, at the synthetic spec's B = 64 (the policy trained at B = 32)
        out = tmp_path / f"m{n_weak + 1}"
        assert main(["run", "--task", "synthetic", "--sampler", "ppo", "--policy", str(folder), "--iterations", "30",
                     "--run-dir", str(out), "--no-progress", "--set", f"task_kwargs.n_weak={n_weak}",
                     "--set", "task_kwargs.hidden_dim=8", "--set", "eval_every=30"]) == 0
        counts = np.load(next(out.glob("*/counts.npy")))
        assert counts.shape == (30, n_weak + 1) and (counts.sum(1) == (n_weak + 1) * 64).all()  # M x B each
        for start in range(0, 30, 10):  # held for the policy's K = 10 iterations
            assert (counts[start : start + 10] == counts[start]).all()


def test_family_comparison_pairs_every_row_on_the_same_cases(tiny_family_policy, tmp_path, capsys):
    import json
    import shutil

    from dus_gym.cli import main

    _, folder = tiny_family_policy
    blind = tmp_path / "blind"  # a stand-in for a twin trained with blind=true: the same network, acting blind
    shutil.copytree(folder, blind)
    policy = json.loads((blind / "policy.json").read_text())
    policy["env"]["blind"] = True
    (blind / "policy.json").write_text(json.dumps(policy))
    argv = ["compare", "--task", "synthetic-family", "--n-instances", "3", "--seeds", "0", "1", "--alphas", "3", "10",
            "--sources", "train", "val", "probe", "--tune-instances", "2", "--tune-seeds", "0", "--no-ogm-ge",
            "--policy", str(folder), "--policy", str(folder), "--no-cmd-policy", str(folder),
            "--blind-policy", str(blind), "--workers", "1", "--out", str(tmp_path / "fam"), "--no-progress",
            "--set", "n_iterations=20", "--set", "task_kwargs.hidden_dim=8", "--set", "task_kwargs.n_samples=300",
            "--set", "eval_every=20"]
    assert main(argv) == 0
    record = json.loads((tmp_path / "fam" / "family.json").read_text())
    rows = record["rows"]
    pooled = {"ppo", "ppo-replay", "ppo-replay-other", "ppo-commit@1", "ppo-commit@3", "ppo-no-cmd"}
    assert set(rows) == {"uniform", "heuristic-train", "heuristic-val", "heuristic-probe", "heuristic-reversed",
                         "oracle", "equivariant-blind", *pooled, *(f"{p}#0" for p in pooled),
                         *(f"{p}#1" for p in pooled - {"ppo-no-cmd"})}
    cases = [(c["instance"], c["seed"]) for c in rows["uniform"]]
    assert len(cases) == 6 and all([(c["instance"], c["seed"]) for c in r] == cases for r in rows.values())
    from dus_gym.experiments.family import family_config

    base = family_config("synthetic-family")
    assert record["pool"] == list(TaskFamily.from_config(base.task, base.task_kwargs, base.family).held_out[:3])
    assert record["alpha"] in (3.0, 10.0) and len(record["tuning"]) == 6 and record["tuning_runs"] == 12
    assert record["heuristic"] in ("heuristic-train", "heuristic-val", "heuristic-probe")
    samples = {label: {round(c["samples"], 6) for c in r} for label, r in rows.items()}
    assert all(s == samples["uniform"] for s in samples.values())  # equal samples per iteration, every row
    cells = tmp_path / "fam" / "cells"

    def counts(stem: str) -> np.ndarray:
        return np.load(cells / f"{stem}.npz")["counts"]

    for c in rows["ppo-replay#0"]:  # the same instance's counts from the other seed
        other = 1 - c["seed"]
        assert np.array_equal(counts(f"ppo-replay_0_i{c['instance']}_seed{c['seed']}"),
                              counts(f"ppo_0_i{c['instance']}_seed{other}"))
    for c in rows["ppo-replay-other#0"]:  # another instance's counts (as many modalities), the other seed
        replayed = counts(f"ppo-replay-other_0_i{c['instance']}_seed{c['seed']}")
        sources = [counts(f"ppo_0_i{i}_seed{1 - c['seed']}") for i in record["pool"] if i != c["instance"]]
        assert any(np.array_equal(replayed, s) for s in sources) or len(record["pool"]) == 1
    two = {(c["instance"], c["seed"]): c["acc"] for c in rows["ppo#1"]}
    assert all(c["acc"] == pytest.approx(two[(c["instance"], c["seed"])]) for c in rows["ppo"])  # mean of equal seeds
    out = capsys.readouterr().out
    assert "ppo − row" in out and "df = 2" in out and "harmful" in out and "IQM normalised" in out
    assert main(argv) == 0  # a rerun resumes: nothing runs again
    assert json.loads((tmp_path / "fam" / "family.json").read_text())["ran"] == 0


@pytest.mark.parametrize("where", ["config", "env spec"])
def test_a_family_generator_named_by_a_file_runs_nothing_without_the_opt_in(where, capsys, tmp_path):
    from dus_gym.cli import main

    marker = tmp_path / "pwned"
    data = {"task": "synthetic", "n_iterations": 2,
            "family": {"generator": "os:system", "generator_kwargs": {"command": f"touch {marker}"}}}
    if where == "config":
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
        code = main(["run", "--config", str(tmp_path / "c.yaml"), "--run-dir", str(tmp_path / "runs")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        assert "family.generator" in err and "--allow-task-import" in err
    else:
        (tmp_path / "fam.yaml").write_text(yaml.safe_dump({**data, "env_id": "dus_gym/EvilFamily12-v0"}))
        with pytest.warns(UserWarning, match="fam.yaml skipped"):
            assert register_envs(tmp_path) == []
    assert not marker.exists()
