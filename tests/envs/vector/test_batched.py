"""The batched envs (VecDUSEnv, and the BatchedEnvs behind DUSVectorEnv): equal to separate envs, one copy of
the task data, divergence, SB3 wrappers, family instances per env, and bad num_envs or actions."""

import re

import numpy as np
import pytest
import torch
from stable_baselines3.common.vec_env import DummyVecEnv, VecCheckNan, VecMonitor, VecNormalize

from dus_gym.core.batched_learner import (
    BatchedLearner,
    task_shape_key,
)
from dus_gym.core.config import ConfigError
from dus_gym.envs.env import DUSEnv
from dus_gym.envs.registration import env_kwargs_of, spec_config
from dus_gym.envs.vector.batched import VecDUSEnv
from dus_gym.tasks import cached_task
from tests.helpers import ENV_KWARGS

SMALL = {"n_iterations": 10, "iterations_per_step": 5}
TINY = {"n_iterations": 40, "iterations_per_step": 10}  # 4 steps per episode


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one torch thread per module


def _rollout(venv, actions):
    venv.seed(7)
    out = [(venv.reset(), None, None, None)]
    for a in actions:
        out.append(venv.step(a))
    return out


@pytest.mark.parametrize("kwargs", [
    {},
    {"cmd": {"source": "probe", "probe_size": 50}, "learner": {"count_sizes": [16, 64, 128], "lr_decay_every": 4}},
    {"learner": {"fusion": "gated"}},
])
def test_vectorised_env_matches_separate_envs(kwargs):
    n_envs = 3
    env_kwargs = {**SMALL, **kwargs}
    rng = np.random.default_rng(0)
    actions = [rng.uniform(-1, 1, size=(n_envs, 2)).astype(np.float32) for _ in range(5)]  # 2 episodes and a bit
    separate = _rollout(DummyVecEnv([lambda: DUSEnv(**env_kwargs)] * n_envs), actions)
    batched = _rollout(VecDUSEnv(n_envs, **env_kwargs), actions)
    for (obs_a, rew_a, done_a, info_a), (obs_b, rew_b, done_b, info_b) in zip(separate, batched, strict=True):
        np.testing.assert_allclose(obs_b, obs_a, atol=1e-5)
        if rew_a is None:
            continue
        np.testing.assert_allclose(rew_b, rew_a, atol=1e-5)
        assert done_b.tolist() == done_a.tolist()
        for a, b in zip(info_a, info_b, strict=True):
            assert set(b) == set(a)
            assert b["counts"].tolist() == a["counts"].tolist()
            for key in ("val_acc", "gap", "reward_delta", "mean_count_weak", "val_acc_dominant"):
                assert b[key] == pytest.approx(a[key], abs=1e-5)
            if "terminal_observation" in a:
                np.testing.assert_allclose(b["terminal_observation"], a["terminal_observation"], atol=1e-5)
                assert b["TimeLimit.truncated"] == a["TimeLimit.truncated"]
    assert any(d.any() for _, _, d, _ in batched[1:])  # the rollout crossed an auto-reset


def test_start_checkpoint_matches_separate_envs(tmp_path):
    trained = DUSEnv(**SMALL)
    trained.reset(seed=0)
    trained.step(np.array([-0.5, 0.5], dtype=np.float32))
    trained.learner.save(tmp_path / "learner.pt")
    kwargs = {**SMALL, "start_checkpoint": str(tmp_path / "learner.pt")}
    actions = [np.array([[0.3, -0.2], [-1.0, 1.0]], dtype=np.float32)] * 2
    separate = _rollout(DummyVecEnv([lambda: DUSEnv(**kwargs)] * 2), actions)
    batched = _rollout(VecDUSEnv(2, **kwargs), actions)
    for (obs_a, rew_a, *_), (obs_b, rew_b, *_) in zip(separate, batched, strict=True):
        np.testing.assert_allclose(obs_b, obs_a, atol=1e-5)
        if rew_a is not None:
            np.testing.assert_allclose(rew_b, rew_a, atol=1e-5)


def test_learners_share_the_task_data():
    venv = VecDUSEnv(4, **SMALL)
    train = cached_task("synthetic").splits["train"]
    assert venv.task is cached_task("synthetic")
    for m, x in venv.learners.train_split.features.items():
        assert x.data_ptr() == train.features[m].data_ptr()
    single = DUSEnv(**SMALL)
    single.reset(seed=0)
    assert single.learner.train_split.features["weak"].data_ptr() == train.features["weak"].data_ptr()


def test_divergence_truncates_one_env_and_resets_it(monkeypatch):
    base = VecDUSEnv(2, seed=0, divergence_penalty=2.0, **SMALL)
    venv = VecMonitor(base, info_keywords=base.info_keywords())  # keywords recorded also for a diverged episode
    venv.reset()
    real_step = BatchedLearner.step

    def diverging(self, counts, active=None, progress=None):
        stats = real_step(self, counts, active, progress)
        stats.loss[1] = np.nan
        return stats

    monkeypatch.setattr(BatchedLearner, "step", diverging)
    obs, rewards, dones, infos = venv.step(np.zeros((2, 2), dtype=np.float32))
    assert dones.tolist() == [False, True] and rewards[1] == -2.0 and infos[1]["diverged"]
    assert infos[1]["TimeLimit.truncated"] and infos[1]["iteration"] == 1 and "episode" in infos[1]
    assert infos[0]["iteration"] == 5 and obs[1][-1] == 0.0  # env 1 starts afresh


def test_sb3_wrappers_and_ppo_run_on_it():
    from stable_baselines3 import PPO

    base = VecDUSEnv(2, seed=0, **SMALL)
    monitored = VecCheckNan(VecMonitor(base, info_keywords=base.info_keywords()), raise_exception=True)
    venv = VecNormalize(monitored, norm_reward=False)
    model = PPO("MlpPolicy", venv, n_steps=4, batch_size=4, n_epochs=1, policy_kwargs={"net_arch": [8]}, seed=0,
                device="cpu")
    model.learn(8)
    assert model.num_timesteps == 8
    assert len(model.ep_info_buffer) == 4  # 2 envs x 2 episodes of 2 steps, logged as rollout/ep_rew_mean
    assert {"r", "l", "val_acc", "mean_count_weak"} <= set(model.ep_info_buffer[0])
    assert model.ep_info_buffer[0]["l"] == 2
    assert venv.get_attr("n_iterations") == [10, 10]
    assert venv.env_method("info_keywords")[0] == base.info_keywords()
    with pytest.raises(AttributeError, match="shares"):
        venv.set_attr("n_iterations", 3)


def test_unsupported_settings_are_refused():
    with pytest.raises(ConfigError, match="adam"):
        VecDUSEnv(2, learner={"optimizer": "adam"}, **SMALL)
    with pytest.raises(ConfigError, match="ogm-ge"):
        VecDUSEnv(2, learner={"method": "ogm-ge"}, **SMALL)


def _family_kwargs(**overrides):
    """A small family: 9 + 9 instances of two shapes (2 and 3 modalities), a quarter held out."""
    instances = ([{"data_seed": s} for s in range(9)]
                 + [{"data_seed": s, "n_weak": 2, "dominant_slot": 1} for s in range(9)])
    spec = {"task_kwargs": {"n_samples": 300, "hidden_dim": 8},
            "family": {"generator": None, "generator_kwargs": {}, "instances": instances, "held_out": 0.25,
                       "split_seed": 0}, **TINY, **overrides}
    return env_kwargs_of(spec_config("synthetic-family.yaml", spec, "test"))


def _episode_batches(venv, n_batches):
    """The instances of every env in ``n_batches`` batches of episodes (checking the infos on the way)."""
    venv.reset()
    batches = [[info["instance"] for info in venv.reset_infos]]
    while len(batches) < n_batches:
        actions = np.zeros((venv.num_envs, venv.action_space.shape[0]), dtype=np.float32)
        _, _, dones, infos = venv.step(actions)
        assert [info["instance"] for info in infos] == batches[-1]  # each env's own instance at every step
        if dones.all():
            batches.append([info["instance"] for info in venv.reset_infos])
            assert venv.env_method("instance_info") == [venv.batch.instance_info(i) for i in range(venv.num_envs)]
            assert venv.get_attr("instance") == batches[-1]
    return batches


def test_family_envs_train_distinct_instances_of_one_shape():
    kwargs = _family_kwargs()
    venv = VecDUSEnv(4, seed=0, **kwargs)
    family, pool = venv.template.family, set(venv.template.pool)
    batches = _episode_batches(venv, 5)
    for instances in batches:
        assert len(set(instances)) == 4 and set(instances) <= pool
        assert len({len(family.make(k).modalities) for k in instances}) == 1  # one shape per batch
    learners = venv.learners
    for i, k in enumerate(batches[-1]):  # learner i reads its own instance's training rows
        task = learners.task_of(i)
        assert task is family.make(k)
        n_train = len(task.splits["train"])
        start = int(learners.keep[i].min()) // n_train * n_train
        assert int(learners.keep[i].max()) < start + n_train
        torch.testing.assert_close(learners.train_split.features["weak"][learners.keep[i]],
                                   task.splits["train"].features["weak"][learners.keep[i] - start])
    assert _episode_batches(VecDUSEnv(4, seed=0, **kwargs), 5) == batches  # reproducible
    shared = _episode_batches(VecDUSEnv(4, seed=0, **_family_kwargs(shared_instance=True)), 5)
    assert all(len(set(instances)) == 1 for instances in shared)
    assert shared[0][0] == batches[0][0]  # env 0 draws as before
    seen, seen_shared = {k for b in batches for k in b}, {k for b in shared for k in b}
    assert len(seen) >= 2 * len(seen_shared)


def test_family_envs_match_separate_envs_on_the_named_instances():
    kwargs = _family_kwargs()
    venv = VecDUSEnv(3, **kwargs)
    family = venv.template.family
    named = [k for k in family.train if len(family.make(k).modalities) == 2][:3]
    options = [{"instance": k} for k in named]
    separate = DummyVecEnv([lambda: DUSEnv(**kwargs)] * 3)
    rng = np.random.default_rng(0)
    actions = [rng.uniform(-1, 1, size=(3, 3)).astype(np.float32) for _ in range(4)]
    out = []
    for env in (separate, venv):
        env.seed(3)
        env.set_options(options)
        rollout = [(env.reset(), [info["instance"] for info in env.reset_infos])]
        rollout += [env.step(a) for a in actions]
        out.append(rollout)
    assert out[0][0][1] == out[1][0][1] == named
    assert out[1][-1][2].all()  # the rollout crossed the end of the episodes
    np.testing.assert_allclose(out[1][0][0], out[0][0][0], atol=1e-5)
    for (obs_a, rew_a, done_a, info_a), (obs_b, rew_b, done_b, info_b) in zip(out[0][1:], out[1][1:], strict=True):
        ended = done_a.all()  # then env 0 draws its next instance as DUSEnv does, the others from its group
        np.testing.assert_allclose(obs_b[:1] if ended else obs_b, obs_a[:1] if ended else obs_a, atol=1e-5)
        np.testing.assert_allclose(rew_b, rew_a, atol=1e-5)
        assert done_b.tolist() == done_a.tolist()
        for a, b in zip(info_a, info_b, strict=True):
            assert b["instance"] == a["instance"] and b["val_acc"] == pytest.approx(a["val_acc"], abs=1e-5)
            if "terminal_observation" in a:
                np.testing.assert_allclose(b["terminal_observation"], a["terminal_observation"], atol=1e-5)


def test_reset_options_name_the_instances():
    venv = VecDUSEnv(4, seed=0, **_family_kwargs())
    family = venv.template.family
    held = family.held_out[0]
    venv.set_options({"instance": held})
    venv.reset()
    assert [info["instance"] for info in venv.reset_infos] == [held] * 4 and venv.reset_infos[0]["held_out"]
    first = family.train[0]
    venv.set_options([{"instance": first}, {}, {}, {}])
    venv.reset()
    instances = [info["instance"] for info in venv.reset_infos]
    assert instances[0] == first and len(set(instances)) == 4
    assert all(task_shape_key(family.make(k)) == task_shape_key(family.make(first)) for k in instances)
    other = next(k for k in family.train if len(family.make(k).modalities) != len(family.make(first).modalities))
    venv.set_options([{"instance": first}, {"instance": other}, {}, {}])
    with pytest.raises(ValueError, match="differ in shapes"):
        venv.reset()


def test_gymnasium_vector_env_puts_each_env_on_its_own_instance():
    from dus_gym.envs.vector.gymnasium_vector_env import DUSVectorEnv

    envs = DUSVectorEnv(4, **_family_kwargs())
    _, infos = envs.reset(seed=0)
    assert len(set(infos["instance"].tolist())) == 4
    _, _, _, _, infos = envs.step(np.zeros((4, 3), dtype=np.float32))
    assert len(set(infos["instance"].tolist())) == 4
    first = envs.batch.template.family.train[0]
    _, infos = envs.reset(seed=0, options={"instance": first})
    assert infos["instance"].tolist() == [first] * 4


@pytest.mark.parametrize("num_envs, message", [
    (10**6, "num_envs must be a whole number from 1 to 1024, got 1000000"),
    (0, "num_envs must be a whole number from 1 to 1024, got 0"),
    (-2, "from 1 to 1024, got -2"),
    (1.5, "got 1.5 (float)"),
    ("2", "got '2' (str)"),
    (True, "got True (bool)"),
    (None, "got None (NoneType)"),
])
def test_num_envs_is_a_bounded_whole_number_checked_before_any_work(num_envs, message, monkeypatch):
    import gymnasium as gym

    from dus_gym.envs.vector import batched as vectorized
    from dus_gym.envs.vector import gymnasium_vector_env as vector_env

    built = []
    monkeypatch.setattr(vector_env, "spec_config", lambda *a, **k: built.append(a))  # nothing may be read or built
    with pytest.raises(ValueError, match=re.escape(message)):
        gym.make_vec("dus_gym/Synthetic-v0", num_envs=num_envs, vectorization_mode="vector_entry_point")
    assert built == []
    for make in (vector_env.DUSVectorEnv, vectorized.VecDUSEnv, vectorized.BatchedEnvs):
        with pytest.raises(ValueError, match=re.escape(message)):
            make(num_envs, **ENV_KWARGS)


@pytest.fixture(scope="module")
def vector_envs():
    from dus_gym.envs.vector.batched import VecDUSEnv
    from dus_gym.envs.vector.gymnasium_vector_env import DUSVectorEnv

    envs = {"DUSVectorEnv": DUSVectorEnv(2, **ENV_KWARGS), "VecDUSEnv": VecDUSEnv(2, seed=0, **ENV_KWARGS)}
    envs["DUSVectorEnv"].reset(seed=0)
    envs["VecDUSEnv"].reset()
    return envs


BAD_VECTOR_ACTIONS = {
    "None": (None, "expected 2 actions \\(one per env\\), got None"),
    "a scalar": (0.5, "expected 2 actions \\(one per env\\), got 0.5"),
    "one action": (np.zeros((1, 2), np.float32), "expected 2 actions"),
    "complex": (np.array([[0.5 + 1j, 0.0], [0.0, 0.0]]), "action has dtype complex128"),
    "complex, no imaginary part": (np.zeros((2, 2), np.complex64), "action has dtype complex64"),
    "text": (np.array([["a", "b"], ["c", "d"]]), "action has dtype <U1"),
    "bool": (np.zeros((2, 2), bool), "action has dtype bool"),
    "NaN in the second env": (np.array([[0.0, 0.0], [np.nan, 0.0]], np.float32), "NaN/inf"),
    "out of range": (np.array([[0.0, 3.0], [0.0, 0.0]], np.float32), "outside \\[-1, 1\\]"),
    "ragged": ([[0.0, 0.0], [0.0]], "not an array"),
    "wrong width": (np.zeros((2, 3), np.float32), "action has shape \\(3,\\)"),
}


@pytest.mark.parametrize("kind", ["DUSVectorEnv", "VecDUSEnv"])
@pytest.mark.parametrize("case", list(BAD_VECTOR_ACTIONS))
def test_vector_env_actions_are_checked_as_the_single_envs_are(kind, case, vector_envs):
    from dus_gym.samplers.action import ActionError

    env = vector_envs[kind]
    action, message = BAD_VECTOR_ACTIONS[case]
    iteration = env.batch.learners.iteration.copy()
    with pytest.raises(ActionError, match=message):
        if kind == "DUSVectorEnv":
            env.step(action)
        else:
            env.step_async(action)
            env.step_wait()
    assert (env.batch.learners.iteration == iteration).all()  # nothing ran
