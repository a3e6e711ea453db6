import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import yaml
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import dus_gym
from dus_gym.core.config import ConfigError
from dus_gym.core.observation import cmd_observation
from dus_gym.envs.env import DUSEnv
from dus_gym.envs.registration import register_envs
from dus_gym.samplers.action import CountsAction

SMALL = {"n_iterations": 40, "iterations_per_step": 20}
BUILT_IN = ["dus_gym/MFeat-v0", "dus_gym/Synthetic-v0"]
NEED_DATA = {"dus_gym/CremaD-v0", "dus_gym/KineticsSounds-v0",  # checked on a fixture in test_audiovisual.py,
             "dus_gym/Twitter2015-v0", "dus_gym/Sarcasm-v0",  # test_imagetext.py
             "dus_gym/NVGesture-v0"}  # and test_gesture.py
FAMILIES = {"dus_gym/SyntheticFamily-v0", "dus_gym/MFeatFamily-v1",  # checked in test_families.py,
            "dus_gym/SyntheticFamily-v1", "dus_gym/SyntheticFamilyOOD-v0"}  # and test_strength.py


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


def test_action_mappings():
    box = CountsAction(2, n_min=8, n_max=256)
    assert box.to_counts([-1, 1]).tolist() == [8, 256]
    assert box.to_counts([0, -0.5]).tolist() == [132, 70]
    levels = CountsAction(2, action_type="multidiscrete", count_levels=(16, 64, 128))
    assert levels.to_counts([0, 2]).tolist() == [16, 128]
    with pytest.raises(ValueError, match="level index"):
        levels.to_counts([3, 0])
    with pytest.raises(ValueError):
        CountsAction(2, n_min=0)


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


def test_user_spec_registers_and_bad_specs_fail(tmp_path):
    spec = {"env_id": "dus_gym/TinyTest-v0", "task": "tests.tasks.test_mfeat:_tiny_task", "n_iterations": 20,
            "env": {"iterations_per_step": 10}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(spec))
    with pytest.warns(UserWarning, match="names the task 'tests.tasks.test_mfeat:_tiny_task'"):
        assert register_envs(tmp_path) == []  # a spec is a file: its module:function task needs the opt-in
    assert register_envs(tmp_path, allow_task_import=True) == ["dus_gym/TinyTest-v0"]
    env = gym.make("dus_gym/TinyTest-v0")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (9,)
    sb3_check_env(env.unwrapped)
    for bad, message in [({"env_id": "dus_gym/Bad", "task": "synthetic"}, "version"),
                         ({"env_id": "dus_gym/Bad-v0", "task": "synthetic", "env": {"n_mn": 3}}, "did you mean"),
                         ({"env_id": "dus_gym/Bad-v0", "task": "synthetic", "env": {"n_min": 300}}, "n_min")]:
        folder = tmp_path / message.replace(" ", "_")
        folder.mkdir()
        (folder / "bad.yaml").write_text(yaml.safe_dump(bad))
        with pytest.warns(UserWarning, match=message):
            assert register_envs(folder) == []  # reported and skipped
    with pytest.raises(ConfigError, match="not found"):
        register_envs(Path(tmp_path / "nowhere"))


def test_shipped_table_matches_the_spec_files():
    from dus_gym.core.files import read_yaml
    from dus_gym.envs.registration import SHIPPED_ENVS, spec_path

    specs = {p.name for p in spec_path("synthetic.yaml").parent.glob("*.yaml")}
    assert {s.spec for s in SHIPPED_ENVS.values()} == specs  # every shipped spec is registered
    for env_id, shipped in SHIPPED_ENVS.items():
        data = read_yaml(spec_path(shipped.spec))
        assert data["env_id"] == env_id
        assert shipped.nondeterministic == (data.get("learner", {}).get("device", "cpu") != "cpu")


def test_import_reads_no_spec_and_make_reads_it(tmp_path):
    import subprocess
    import sys

    code = ("import pathlib, sys\n"
            "def refuse(self, *a, **k):\n    raise AssertionError(f'read {self} at import')\n"
            "real, pathlib.Path.read_text = pathlib.Path.read_text, refuse\n"
            "import dus_gym\n"
            "pathlib.Path.read_text = real\n"
            "from dus_gym.envs.registration import SHIPPED_ENVS\n"
            "assert len(dus_gym.ENV_IDS) == len(SHIPPED_ENVS) == 11, dus_gym.ENV_IDS\n"
            "assert 'torch' not in sys.modules, sys.modules.keys()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_make_merges_nested_overrides_into_the_spec_key_by_key(tmp_path):
    spec = {"env_id": "dus_gym/Merge-v0", "task": "synthetic", "task_kwargs": {"hidden_dim": 8, "weak_dim": 5},
            "learner": {"lr": 0.2, "batch_size": 32}, "n_iterations": 20, "env": {"iterations_per_step": 10}}
    (tmp_path / "merge.yaml").write_text(yaml.safe_dump(spec))
    register_envs(tmp_path)
    env = gym.make("dus_gym/Merge-v0", learner={"momentum": 0.5}, task_kwargs={"hidden_dim": 4}).unwrapped
    assert (env.learner_config.lr, env.learner_config.batch_size, env.learner_config.momentum) == (0.2, 32, 0.5)
    assert env.task.splits["train"].features["weak"].shape[1] == 5
    with pytest.raises(ConfigError, match="did you mean 'iterations_per_step'"):
        gym.make("dus_gym/Merge-v0", iterations_per_stp=3)


def test_a_spec_overridden_onto_a_gpu_is_nondeterministic():
    assert gym.make("dus_gym/Synthetic-v0").spec.nondeterministic is False  # registered for the CPU
    for device in ("cuda", "auto"):  # cuda is not needed: the learner is built at reset
        env = gym.make("dus_gym/Synthetic-v0", learner={"device": device})
        assert env.spec.nondeterministic is True and env.unwrapped.spec.nondeterministic is True
        assert env.spec.kwargs["learner"] == {"device": device}
