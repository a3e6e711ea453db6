"""The DUS env: both env checkers on every shipped id, rewards and observations by hand, seeding, divergence,
start checkpoints, task families and the strength action, bad actions, reset options and close."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import dus_gym
from dus_gym.core.config import LearnerConfig, RunConfig, from_dict
from dus_gym.core.observation import MODALITY_FEATURES, cmd_observation
from dus_gym.envs.env import DUSEnv
from dus_gym.envs.registration import register_envs
from dus_gym.experiments.family import case_config, family_config
from dus_gym.experiments.run import run_training
from dus_gym.tasks import make_task
from dus_gym.tasks.families import TaskFamily
from tests.helpers import ENV_KWARGS

SMALL = {"n_iterations": 40, "iterations_per_step": 20}
TINY = {"n_iterations": 20, "iterations_per_step": 10, "task_kwargs": {"n_samples": 300, "hidden_dim": 8}}
BUILT_IN = ["dus_gym/MFeat-v0", "dus_gym/Synthetic-v0"]
NEED_DATA = {"dus_gym/CremaD-v0", "dus_gym/KineticsSounds-v0",  # checked on fixtures in tasks/test_audiovisual.py,
             "dus_gym/Twitter2015-v0", "dus_gym/Sarcasm-v0",  # tasks/test_imagetext.py
             "dus_gym/NVGesture-v0"}  # and tasks/test_gesture.py
FAMILIES = {"dus_gym/SyntheticFamily-v0", "dus_gym/MFeatFamily-v1",  # checked below, as the family
            "dus_gym/SyntheticFamily-v1", "dus_gym/SyntheticFamilyOOD-v0"}  # and the strength envs


def family_env(**kwargs) -> DUSEnv:
    return gym.make("dus_gym/SyntheticFamily-v0", **{**TINY, **kwargs}).unwrapped


def strength_env(**kwargs):
    register_envs()
    return gym.make("dus_gym/SyntheticFamily-v1", **{**TINY, **kwargs}).unwrapped


def test_every_registered_id_is_checked_somewhere():
    assert set(dus_gym.ENV_IDS) == set(BUILT_IN) | NEED_DATA | FAMILIES


@pytest.mark.parametrize("env_id", BUILT_IN)
def test_both_checkers_pass_on_every_registered_id(env_id):
    env = gym.make(env_id, **SMALL)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gym_check_env(env.unwrapped, skip_render_check=True)
        sb3_check_env(env.unwrapped, warn=True)
    assert not [w for w in caught if "dus_gym" in str(w.filename) or "precision" in str(w.message)]
    multi = gym.make(env_id, action_type="multidiscrete", **SMALL)
    assert isinstance(multi.action_space, gym.spaces.MultiDiscrete)
    gym_check_env(multi.unwrapped, skip_render_check=True)
    sb3_check_env(multi.unwrapped)


@pytest.mark.parametrize("env_id", ["dus_gym/SyntheticFamily-v0", "dus_gym/MFeatFamily-v1"])
def test_family_env_passes_both_checkers(env_id):
    small = TINY if env_id == "dus_gym/SyntheticFamily-v0" else {"n_iterations": 20, "iterations_per_step": 10}
    env = gym.make(env_id, **small).unwrapped
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gym_check_env(env, skip_render_check=True)
        sb3_check_env(env, warn=True)
    assert not [w for w in caught if "dus_gym" in str(w.filename) or "precision" in str(w.message)]


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


def test_episode_rewards_and_observations_by_hand():
    env = DUSEnv(n_iterations=50, iterations_per_step=20, reward_cmd_weight=0.5, reward_terminal_weight=2.0)
    obs, info = env.reset(seed=0)
    assert obs.tolist() == [0, 0, 0, 1, 0, 0, 0, 1, 0]  # CMD zero, counts B, progress 0
    first_score = info["val_acc"]
    scores, rewards, iterations = [first_score], [], []
    done = False
    while not done:
        obs, reward, terminated, truncated, info = env.step(np.array([-1.0, 0.5], dtype=np.float32))
        done = terminated or truncated
        assert env.observation_space.contains(obs)
        assert reward == pytest.approx(info["reward_delta"] + info["reward_cmd"] + info["reward_terminal"])
        assert info["reward_delta"] == pytest.approx(info["val_acc"] - scores[-1])
        assert info["reward_cmd"] == pytest.approx(-0.5 * info["gap"])
        scores.append(info["val_acc"])
        rewards.append(reward)
        iterations.append(info["iteration"])
    assert iterations == [20, 40, 50] and terminated and not truncated  # the last step runs 10
    assert info["reward_terminal"] == pytest.approx(2.0 * scores[-1])
    assert info["counts"].tolist() == [8, 194]  # -1 -> n_min; 0.5 -> 8 + 0.75 * 248
    assert info["mean_count_dominant"] == 8 and info["val_acc_weak"] > 0.3
    expected = cmd_observation(env.monitor, np.array([8, 194]), 64, 1.0)
    assert obs == pytest.approx(expected)
    assert scores[-1] > first_score + 0.3  # the learner learned during the episode
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(2, dtype=np.float32))


def test_same_seed_same_rollout_and_reset_reseeds():
    def rollout(seed):
        env = DUSEnv(**SMALL)
        obs, _ = env.reset(seed=seed)
        out = [obs]
        for a in ([0.2, -0.4], [-1.0, 1.0]):
            obs, reward, *_ = env.step(np.array(a, dtype=np.float32))
            out += [obs, np.array([reward])]
        return np.concatenate(out)
    assert np.array_equal(rollout(3), rollout(3))
    assert not np.array_equal(rollout(3), rollout(4))


@pytest.mark.parametrize("action, message", [
    (np.zeros(3, np.float32), "shape \\(3,\\)"),
    (np.array(["a", "b"]), "dtype <U1"),
    (np.array([np.nan, 0.0], np.float32), "NaN/inf"),
    (np.array([2.0, 0.0], np.float32), "outside \\[-1, 1\\]"),
    ([[0.0], [0.0, 1.0]], "not an array"),
    (np.array([0.5 + 1j, 0.0]), "dtype complex128"),
    (np.array([True, False]), "dtype bool"),
])
def test_env_action_errors_name_the_expected_space(action, message):
    from dus_gym.envs.env import DUSEnv
    from dus_gym.samplers.action import ActionError

    env = DUSEnv(n_iterations=4, iterations_per_step=2, task_kwargs={"hidden_dim": 8})
    env.reset(seed=0)
    with pytest.raises(ActionError, match=f"{message}.*expected an action in Box\\(-1.0, 1.0, \\(2,\\), float32\\)"):
        env.step(action)


def test_nan_loss_truncates_with_penalty(monkeypatch):
    from stable_baselines3.common.monitor import Monitor

    from dus_gym.core.backend import IterationStats
    from dus_gym.core.learner import Learner

    env = DUSEnv(divergence_penalty=3.0, **SMALL)
    monitored = Monitor(env, info_keywords=env.info_keywords())  # as train_policy wraps it
    monitored.reset(seed=0)
    real_step = Learner.step

    def diverging(self, counts, progress=None):
        stats = real_step(self, counts, progress)
        return IterationStats(float("nan"), stats.fusion_loss, stats.unimodal_losses, stats.status, stats.counts)

    monkeypatch.setattr(Learner, "step", diverging)
    obs, reward, terminated, truncated, info = monitored.step(np.zeros(2, dtype=np.float32))
    assert truncated and not terminated and reward == -3.0 and info["diverged"]
    assert env.observation_space.contains(obs)
    assert info["episode"]["r"] == -3.0 and set(env.info_keywords()) <= set(info["episode"])


def test_a_diverging_learner_truncates_the_env_episode_with_penalty_and_a_log(caplog):
    from dus_gym.envs.env import DUSEnv

    env = DUSEnv(n_iterations=40, iterations_per_step=20, divergence_penalty=2.0, learner={"lr": 1e30},
                 task_kwargs={"hidden_dim": 8})
    env.reset(seed=0)
    with caplog.at_level("WARNING", logger="dus_gym.core.episode"):
        obs, reward, terminated, truncated, info = env.step(np.zeros(2, np.float32))
    assert truncated and not terminated and reward == -2.0 and info["diverged"]
    assert not np.isfinite(info["loss"]) and env.observation_space.contains(obs)
    assert "loss became" in caplog.text and "truncated" in caplog.text


def test_start_from_a_saved_learner_checkpoint(tmp_path):
    fresh = DUSEnv(**SMALL)
    _, info = fresh.reset(seed=0)
    for _ in range(2):
        fresh.step(np.array([-0.5, 0.5], dtype=np.float32))
    fresh.learner.save(tmp_path / "learner.pt")
    trained_score = fresh.learner.accuracies("val")[0]
    warm = DUSEnv(start_checkpoint=str(tmp_path / "learner.pt"), **SMALL)
    _, warm_info = warm.reset(seed=5)
    assert warm_info["val_acc"] == pytest.approx(trained_score) and trained_score > info["val_acc"] + 0.2
    obs, *_ = warm.step(np.zeros(2, dtype=np.float32))
    assert obs[-1] == pytest.approx(0.5)  # progress counts from the start state
    with pytest.raises(FileNotFoundError, match="not found"):
        DUSEnv(start_checkpoint=str(tmp_path / "missing.pt"), **SMALL).reset(seed=0)
    other = DUSEnv(task="mfeat", start_checkpoint=str(tmp_path / "learner.pt"), **SMALL)
    with pytest.raises(ValueError, match="saved for task 'synthetic'"):
        other.reset(seed=0)


def test_env_start_checkpoint_of_another_task(tmp_path):
    from dus_gym.core.learner import Learner
    from dus_gym.envs.env import DUSEnv

    Learner(make_task("synthetic", hidden_dim=8), LearnerConfig(), seed=0).save(tmp_path / "learner.pt")

    env = DUSEnv(task="mfeat", n_iterations=4, start_checkpoint=str(tmp_path / "learner.pt"))
    with pytest.raises(ValueError, match="saved for task 'synthetic'.*not 'mfeat'"):
        env.reset(seed=0)


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
    assert info["n_modalities"] == M  # action entries past M are ignored, and info says how many count
    mask = obs[: 3 * len(MODALITY_FEATURES)].reshape(3, -1)[:, MODALITY_FEATURES.index("mask")]
    assert mask.tolist() == [1.0] * M + [0.0] * (3 - M)
    _, _, _, _, step_info = env.step(np.zeros(3, np.float32))
    assert step_info["instance"] == held and step_info["counts"].sum() == M * env.learner_config.batch_size
    assert step_info["n_modalities"] == len(step_info["counts"]) == M


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


def _family_env_kwargs():
    return {"task": "synthetic", "task_kwargs": {"hidden_dim": 4, "n_samples": 300}, "n_iterations": 4,
            "iterations_per_step": 2, "observation": "modalities", "max_modalities": 3,
            "family": {"generator": "synthetic", "generator_kwargs": {"n_instances": 4}}}


BAD_OPTIONS = [
    ({"instance": 1.5}, ValueError, "options\\['instance'\\] must be an int from 0 to 3, got 1.5 \\(float\\)"),
    ({"instance": 1.0}, ValueError, "got 1.0 \\(float\\)"),
    ({"instance": True}, ValueError, "got True \\(bool\\)"),
    ({"instance": np.bool_(True)}, ValueError, "\\(bool_?\\)"),
    ({"instance": "x"}, ValueError, "got 'x' \\(str\\)"),
    ({"instance": "1"}, ValueError, "got '1' \\(str\\)"),
    ({"instance": [1]}, ValueError, "got \\[1\\] \\(list\\)"),
    ({"instance": 4}, ValueError, "instance 4 is not in this family \\(0 to 3\\)"),
    ({"instance": -1}, ValueError, "instance -1 is not in this family"),
    ("x", ValueError, "reset options must be a dict or None, got str"),
    ([("instance", 1)], ValueError, "reset options must be a dict or None, got list"),
]


@pytest.mark.parametrize("options, error, message", BAD_OPTIONS)
@pytest.mark.parametrize("kind", ["DUSEnv", "DUSVectorEnv"])
def test_reset_options_are_a_dict_and_the_instance_a_plain_int_in_range(kind, options, error, message):
    from dus_gym.envs.env import DUSEnv
    from dus_gym.envs.vector.gymnasium_vector_env import DUSVectorEnv

    env = DUSEnv(**_family_env_kwargs()) if kind == "DUSEnv" else DUSVectorEnv(1, **_family_env_kwargs())
    with pytest.raises(error, match=message):
        env.reset(seed=0, options=options)
    env.reset(seed=0, options={"instance": np.int64(2)})  # a numpy integer is an int
    instance = env.instance if kind == "DUSEnv" else env.batch.template.instance
    assert instance == 2


def test_stepping_or_resetting_a_closed_env_is_an_error():
    from dus_gym.envs.env import DUSEnv
    from dus_gym.envs.vector.batched import VecDUSEnv
    from dus_gym.envs.vector.gymnasium_vector_env import DUSVectorEnv

    single = DUSEnv(**ENV_KWARGS)
    single.reset(seed=0)
    single.close()
    with pytest.raises(RuntimeError, match="this DUSEnv is closed; make a new one"):
        single.step(np.zeros(2, np.float32))
    with pytest.raises(RuntimeError, match="this DUSEnv is closed"):
        single.reset(seed=0)
    vector = DUSVectorEnv(2, **ENV_KWARGS)
    vector.reset(seed=0)
    vector.close()
    with pytest.raises(RuntimeError, match="this DUSVectorEnv is closed; make a new one"):
        vector.step(np.zeros((2, 2), np.float32))
    with pytest.raises(RuntimeError, match="this DUSVectorEnv is closed"):
        vector.reset(seed=0)
    sb3 = VecDUSEnv(2, seed=0, **ENV_KWARGS)
    sb3.reset()
    sb3.close()
    with pytest.raises(RuntimeError, match="this VecDUSEnv is closed; make a new one"):
        sb3.step(np.zeros((2, 2), np.float32))
    with pytest.raises(RuntimeError, match="this VecDUSEnv is closed"):
        sb3.reset()
