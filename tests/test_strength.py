"""The strength action, observation ablations, the heuristic's sources and reversal, commit controls, splits."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from dus_gym.agents.policies import ModalityPolicy
from dus_gym.core.config import ConfigError, EnvConfig, FamilyConfig, RunConfig, from_dict
from dus_gym.core.discrepancy import CMDMonitor
from dus_gym.core.observation import GLOBAL_FEATURES, MODALITY_FEATURES, ObservationLayout
from dus_gym.envs.registration import register_envs
from dus_gym.experiments.family import case_config, family_config
from dus_gym.experiments.run import run_training
from dus_gym.samplers import make_sampler
from dus_gym.samplers.action import ActionError, CountsAction, allocate, heuristic_weights
from dus_gym.samplers.base import SamplerState
from dus_gym.tasks.families import TaskFamily, mfeat_family, synthetic_family

TINY = {"n_iterations": 20, "iterations_per_step": 10, "task_kwargs": {"n_samples": 300, "hidden_dim": 8}}


def strength_env(**kwargs):
    register_envs()
    return gym.make("dus_gym/SyntheticFamily-v1", **{**TINY, **kwargs}).unwrapped


def test_strength_action_is_the_heuristic_at_its_alpha():
    action = CountsAction(3, n_min=4, action_type="strength", batch_size=32, max_alpha=60.0, n_slots=3)
    assert action.space.shape == (1,) and action.reacts and action.max_count == 96 - 2 * 4
    d = np.array([0.2, -0.15, -0.05])
    assert action.to_counts([-1.0], d).tolist() == [32, 32, 32]  # alpha 0: uniform
    assert action.alpha([0.0]) == pytest.approx(30.0) and action.alpha([1.0]) == pytest.approx(60.0)
    counts = action.to_counts([0.0], d)
    assert counts.tolist() == allocate(heuristic_weights(d, 30.0), 96, 4).tolist()
    assert counts.sum() == 96 and counts[0] < counts[2] < counts[1]  # the modality ahead gets the fewest
    heuristic = make_sampler("heuristic", 32, 3, alpha=30.0, n_min=4, allocation=True)
    state = SamplerState(5, 100, 32, d + 0.5, d, d, counts, np.zeros(1, np.float32))
    assert heuristic.counts(state).tolist() == counts.tolist()
    for bad in ([0.0, 0.0], [np.nan], [1.5]):
        with pytest.raises(ActionError):
            action.to_counts(bad, d)
    with pytest.raises(ValueError, match="strength action chooses the heuristic's alpha"):
        action.to_action([32, 32, 32])


@pytest.mark.parametrize("env_id", ["dus_gym/SyntheticFamily-v1", "dus_gym/SyntheticFamilyOOD-v0"])
def test_strength_env_passes_both_checkers_and_reacts_within_a_step(env_id):
    register_envs()
    env = gym.make(env_id, **TINY).unwrapped
    assert env.action_space.shape == (1,)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check_env(env, skip_render_check=True)
        sb3_check_env(env, warn=True)
    env.reset(seed=3, options={"instance": 0})
    _, _, _, _, info = env.step(np.array([1.0], dtype=np.float32))
    # counts follow d_t at every iteration: after 10 iterations the dominant slot has fewer than B
    slot = env.family.instances[0]["dominant_slot"]
    assert info["counts"][slot] < 32 and info["counts"].sum() == 32 * env.n_modalities


def test_strength_env_held_constant_equals_the_heuristic_run():
    env = strength_env(n_iterations=40)
    obs, info = env.reset(seed=5, options={"instance": 2})
    done = False
    while not done:
        obs, _, terminated, truncated, step_info = env.step(np.array([0.0], dtype=np.float32))
        done = terminated or truncated
    base = family_config("synthetic-family-v1.yaml", {"n_iterations": 40, "task_kwargs": TINY["task_kwargs"]})
    family = TaskFamily.from_config(base.task, base.task_kwargs, base.family)
    config = case_config(base, family, 2, info["learner_seed"], "heuristic",
                         {"alpha": 30.0, "allocation": True, "n_min": base.env.n_min})
    config["eval_every"] = 10
    result = run_training(from_dict(RunConfig, config), task=family.make(2), progress=False, probe=False)
    assert result.summary["val_curve"][-1]["fused_acc"] == pytest.approx(step_info["val_acc"], abs=1e-9)
    assert result.counts[-1].tolist() == step_info["counts"].tolist()


def test_hidden_feature_groups_are_zero_and_the_rest_is_kept():
    monitor = CMDMonitor(2)
    monitor.update([0.7, 0.3])
    full = ObservationLayout("modalities", 2, 32, 60, 3)
    no_cmd = ObservationLayout("modalities", 2, 32, 60, 3, hide=("cmd",))
    no_val = ObservationLayout("modalities", 2, 32, 60, 3, hide=("val",))
    args = (monitor, np.array([40, 24]), 0.5, np.array([0.6, 0.4]), 0.8)
    f = len(MODALITY_FEATURES)
    a, b, c = (layout.build(*args) for layout in (full, no_cmd, no_val))
    col = {name: [k * f + MODALITY_FEATURES.index(name) for k in range(2)] for name in MODALITY_FEATURES}
    val_acc = 3 * f + GLOBAL_FEATURES.index("val_acc")
    for name in ("cumulative", "discrepancy", "relative_discrepancy", "status", "memorisation"):
        assert (b[col[name]] == 0).all() and (a[col[name]] != 0).any()
    assert (b[col["val_status"]] == a[col["val_status"]]).all() and b[val_acc] == a[val_acc] == pytest.approx(0.8)
    for name in ("val_status", "memorisation"):
        assert (c[col[name]] == 0).all()
    assert c[val_acc] == 0 and (c[col["discrepancy"]] == a[col["discrepancy"]]).all()
    assert (b[col["count"]] == a[col["count"]]).all() and (c[col["mask"]] == 1).all()
    with pytest.raises(ConfigError, match="env.hide"):
        from_dict(EnvConfig, {"observation": "modalities", "hide": ["progress"]}, "env")
    with pytest.raises(ConfigError, match="'modalities' observation only"):
        from_dict(EnvConfig, {"hide": ["cmd"]}, "env")


def test_reversed_heuristic_feeds_the_modality_ahead_and_val_source_reads_validation():
    d = np.array([0.1, -0.1])
    state = SamplerState(20, 100, 32, d + 0.5, d, d, np.array([32, 32]), np.zeros(1, np.float32),
                         val_status=np.array([0.3, 0.5]), val_acc=0.6)
    plain = make_sampler("heuristic", 32, 2, alpha=10.0, n_min=4, allocation=True)
    reverse = make_sampler("heuristic", 32, 2, alpha=10.0, n_min=4, allocation=True, reverse=True)
    assert plain.counts(state)[0] < 32 < reverse.counts(state)[0]
    assert plain.counts(state).tolist() == reverse.counts(state)[::-1].tolist()  # a mirror image for M = 2
    val = make_sampler("heuristic", 32, 2, alpha=10.0, n_min=4, allocation=True, source="val", val_every=20)
    assert val.validation_every == 20
    assert val.counts(state)[0] > 32  # on validation, modality 0 is behind: it gets more, whatever the train CMD
    with pytest.raises(ValueError, match="source"):
        make_sampler("heuristic", 32, 2, source="test")


def test_val_source_heuristic_runs_and_differs_from_train(tmp_path):
    base = family_config("synthetic-family-v1.yaml", {"n_iterations": 40, "task_kwargs": TINY["task_kwargs"]})
    family = TaskFamily.from_config(base.task, base.task_kwargs, base.family)
    histories = {}
    for source in ("train", "val"):
        config = case_config(base, family, 1, 0, "heuristic",
                             {"alpha": 30.0, "allocation": True, "n_min": 4, "source": source, "val_every": 10})
        histories[source] = run_training(from_dict(RunConfig, config), task=family.make(1), progress=False,
                                         probe=False).counts
    assert all(h.sum(1).tolist() == [32 * h.shape[1]] * 40 for h in histories.values())
    assert not np.array_equal(histories["train"], histories["val"])


def test_policy_widens_to_more_modalities_and_pools_a_strength_action():
    obs3 = gym.spaces.Box(-1.0, 1.0, (3 * len(MODALITY_FEATURES) + len(GLOBAL_FEATURES),), np.float32)
    policy = ModalityPolicy(obs3, gym.spaces.Box(-1.0, 1.0, (1,), np.float32), lambda _: 1e-3, hidden=8)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.3 * torch.randn_like(p))
    rows = torch.rand(2, len(MODALITY_FEATURES))
    rows[:, MODALITY_FEATURES.index("mask")] = 1.0
    g = torch.rand(len(GLOBAL_FEATURES))

    def observation(rows: torch.Tensor, slots: int) -> torch.Tensor:
        padded = torch.zeros(slots, len(MODALITY_FEATURES))
        padded[: len(rows)] = rows
        return torch.cat([padded.reshape(-1), g])[None]

    a = policy.get_distribution(observation(rows, 3)).distribution.mean
    swapped = policy.get_distribution(observation(rows.flip(0), 3)).distribution.mean
    assert torch.allclose(a, swapped, atol=1e-6)  # one action for the task, whatever the modality order
    wide = policy.widened(4)
    assert wide.observation_space.shape == (4 * len(MODALITY_FEATURES) + len(GLOBAL_FEATURES),)
    assert torch.allclose(wide.get_distribution(observation(rows, 4)).distribution.mean, a, atol=1e-6)
    with pytest.raises(ValueError, match="narrow"):
        wide.widened(3)


def test_commit_control_holds_the_counts_after_k_decisions(tiny_strength_policy):
    _, folder = tiny_strength_policy
    base = family_config("synthetic-family-v1.yaml", {"n_iterations": 40, "task_kwargs": TINY["task_kwargs"]})
    family = TaskFamily.from_config(base.task, base.task_kwargs, base.family)
    histories = {}
    for commit in (None, 1):
        kwargs = {"policy": str(folder), **({"commit_after": commit} if commit else {})}
        config = from_dict(RunConfig, case_config(base, family, 0, 0, "ppo", kwargs))
        histories[commit] = run_training(config, task=family.make(0), progress=False, probe=False).counts
    live, committed = histories[None], histories[1]
    assert (committed[10:] == committed[10]).all()  # held from the second decision (K = 10) on
    assert (committed[:10] == live[:10]).all()  # the first decision is the policy's own
    assert len({tuple(row) for row in live}) > 1  # the live policy's counts move with d_t: the control can differ


@pytest.fixture(scope="module")
def tiny_strength_policy(tmp_path_factory):
    from dus_gym.experiments.train_policy import TrainPolicyConfig, train_policy

    root = tmp_path_factory.mktemp("strength-policy")
    hp = root / "ppo.yml"
    hp.write_text(yaml.safe_dump({"dus_gym/SyntheticFamily-v1": {
        "n_envs": 1, "n_timesteps": 16, "policy": "ModalityPolicy", "n_steps": 8, "batch_size": 8, "n_epochs": 1,
        "learning_rate": "lin_1e-3", "policy_kwargs": "dict(hidden=8, log_std_init=-1.0)"}}))
    config = TrainPolicyConfig(env_id="dus_gym/SyntheticFamily-v1", hyperparams=str(hp), vec_env="dummy",
                               run_dir=str(root / "runs"), env_kwargs={**TINY, "n_iterations": 40},
                               eval_freq=0, checkpoint_freq=16, evaluate=False, progress=False)
    return config, train_policy(config, argv=["train_policy.py"])


def test_held_out_by_view_set_shares_no_set_with_training():
    family = TaskFamily.from_config("mfeat", {}, FamilyConfig(generator="mfeat", held_out=0.25, group_by="views"))
    train = {frozenset(family.instances[i]["views"]) for i in family.train}
    held = {frozenset(family.instances[i]["views"]) for i in family.held_out}
    assert not train & held and 0.2 < len(family.held_out) / len(family.instances) < 0.35
    with pytest.raises(ValueError, match="no such task kwarg"):
        TaskFamily.from_config("mfeat", {}, FamilyConfig(instances=({"views": ["fac"]}, {"x": 1}), group_by="views"))
    assert len(mfeat_family()) == 150


def test_synthetic_family_defaults_and_out_of_distribution_ranges():
    default = synthetic_family()
    assert {1 + x["n_weak"] for x in default} == {2, 3} and {x["dominant_dim"] for x in default} == {256, 512}
    assert min(x["weak_signal"] for x in default) >= 1.5
    ood = TaskFamily.from_config("synthetic", {}, family_config("synthetic-family-ood.yaml").family)
    assert {1 + x["n_weak"] for x in ood.instances} == {4} and {x["dominant_dim"] for x in ood.instances} == {1024}
    assert max(x["weak_signal"] for x in ood.instances) <= 1.5 and ood.held_out == ()
    with pytest.raises(ValueError, match="M >= 2"):
        synthetic_family(modalities=(1,))


def test_instance_clustered_intervals_take_the_instance_as_the_unit():
    from scipy import stats

    from dus_gym.experiments.stats import clustered_difference, two_level_aggregates

    values = {0: [0.8, 0.9, 1.0], 1: [0.5, 0.5, 0.5], 2: [0.7, 0.6, 0.8], 3: [0.9, 0.9, 0.9]}
    reference = {0: [0.7, 0.7, 0.7], 1: [0.5, 0.4, 0.6], 2: [0.6, 0.6, 0.6], 3: [0.85, 0.85, 0.85]}
    d = np.array([0.2, 0.0, 0.1, 0.05])  # per-instance mean differences, by hand
    half = stats.t.ppf(0.975, 3) * d.std(ddof=1) / 2  # df = instances - 1 = 3, not cases - 1 = 11
    mean, lo, hi = clustered_difference(values, reference)
    assert mean == pytest.approx(d.mean()) and (lo, hi) == pytest.approx((d.mean() - half, d.mean() + half))
    rng = np.random.default_rng(0)
    base = rng.normal(0, 1, (3, 30))
    agg = two_level_aggregates({"uniform": base, "better": base + 1.0}, reps=500)
    assert agg["better"].iqm == pytest.approx(agg["uniform"].iqm + 1.0)
    assert agg["better"].improvement > 0.7 and agg["better"].iqm_interval[0] < agg["better"].iqm
    one = two_level_aggregates({"uniform": base[:, :1].repeat(30, 1)}, reps=200)  # no spread between instances
    spread = two_level_aggregates({"uniform": base}, reps=200)
    assert np.diff(one["uniform"].iqm_interval)[0] < np.diff(spread["uniform"].iqm_interval)[0]


def test_a_three_slot_policy_drives_a_four_modality_instance(tiny_strength_policy):
    _, folder = tiny_strength_policy
    base = family_config("synthetic-family-ood.yaml", {"n_iterations": 20, "task_kwargs": TINY["task_kwargs"]})
    family = TaskFamily.from_config(base.task, base.task_kwargs, base.family)
    config = from_dict(RunConfig, case_config(base, family, 0, 0, "ppo", {"policy": str(folder)}))
    result = run_training(config, task=family.make(0), progress=False, probe=False)
    assert result.counts.shape == (20, 4) and (result.counts.sum(1) == 4 * 32).all()


def test_heuristic_from_refuses_a_file_that_is_no_family_record(tmp_path):
    from dus_gym.experiments.family import read_tuning

    bad = tmp_path / "family.json"
    bad.write_text('{"rows": {}}')
    with pytest.raises(ConfigError, match="not the family.json of a family evaluation"):
        read_tuning(bad)
    with pytest.raises(ConfigError, match="not the family.json"):
        read_tuning(tmp_path / "missing.json")
