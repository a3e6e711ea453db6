import numpy as np
import pytest
import torch
from stable_baselines3.common.vec_env import DummyVecEnv, VecCheckNan, VecMonitor, VecNormalize

from dus_gym.core.batched_learner import BatchedLearner, MaskedBatchNorm, mask_batch_norms
from dus_gym.core.config import ConfigError, LearnerConfig
from dus_gym.core.learner import Learner
from dus_gym.core.task import MultimodalSplit, Task
from dus_gym.envs.env import DUSEnv
from dus_gym.envs.vector.batched import VecDUSEnv
from dus_gym.tasks import cached_task

SMALL = {"n_iterations": 10, "iterations_per_step": 5}


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


class _BNEncoder(torch.nn.Module):
    def __init__(self, in_dim):
        super().__init__()
        self.out_dim = 8
        self.net = torch.nn.Sequential(torch.nn.Linear(in_dim, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU())

    def forward(self, x):
        return self.net(x)


def _bn_task():
    g = torch.Generator().manual_seed(0)
    def split(n):
        return MultimodalSplit({"a": torch.randn(n, 5, generator=g), "b": torch.randn(n, 3, generator=g)},
                               torch.arange(n) % 3)
    return Task("bn", ("a", "b"), 3, {"train": split(120), "val": split(30), "test": split(30)},
                {"a": lambda: _BNEncoder(5), "b": lambda: _BNEncoder(3)})


def test_batchnorm_uses_masked_statistics():
    task, config = _bn_task(), LearnerConfig(batch_size=16, lr=0.1)
    seeds = [0, 1, 2]
    singles = [Learner(task, config, seed=s) for s in seeds]
    batched = BatchedLearner(task, config, len(seeds))
    for i, s in enumerate(seeds):
        batched.reset_learner(i, s)
    assert all(isinstance(n, MaskedBatchNorm) for n in batched._masked_norms["a"])
    counts = np.array([[4, 16], [16, 2], [9, 9]])
    for _ in range(4):
        stats = batched.step(counts)
        expected = [single.step(c) for single, c in zip(singles, counts, strict=True)]
        np.testing.assert_allclose(stats.loss, [e.loss for e in expected], atol=1e-5)
    for i, single in enumerate(singles):
        state = batched.learner_state(i)
        for key, value in single.model.state_dict().items():
            torch.testing.assert_close(state[key], value, atol=1e-5, rtol=1e-5)
    fused, _ = batched.accuracies("val")
    np.testing.assert_allclose(fused, [s.accuracies("val")[0] for s in singles])


def test_masked_batchnorm_ignores_padded_rows():
    bn = torch.nn.BatchNorm1d(4)
    x = torch.randn(6, 4)
    (masked,) = mask_batch_norms(torch.nn.Sequential(torch.nn.BatchNorm1d(4)))
    masked.mask = torch.tensor([True, True, True, True, False, False])
    y = masked(torch.cat([x[:4], torch.full((2, 4), 1e3)]))
    torch.testing.assert_close(y[:4], bn(x[:4]))
    mean, var, tracked = masked.updated
    torch.testing.assert_close(mean, bn.running_mean)
    torch.testing.assert_close(var, bn.running_var)
    assert int(tracked) == 1
