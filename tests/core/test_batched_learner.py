"""Batched learners on one task instance each: the learner core and the family vec envs."""

import numpy as np
import pytest
import torch
from stable_baselines3.common.vec_env import DummyVecEnv

from dus_gym.core.batched_learner import BatchedLearner, check_equal_shapes, task_shape_key
from dus_gym.core.config import LearnerConfig
from dus_gym.core.learner import Learner
from dus_gym.envs.env import DUSEnv
from dus_gym.envs.registration import env_kwargs_of, spec_config
from dus_gym.envs.vector.batched import VecDUSEnv
from dus_gym.tasks import cached_task

TINY = {"n_iterations": 40, "iterations_per_step": 10}  # 4 steps per episode


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one torch thread per module


def _task(data_seed, **kwargs):
    return cached_task("synthetic", **{"n_samples": 300, "hidden_dim": 16, "data_seed": data_seed, **kwargs})


def _assert_stats_match(stats, expected):
    np.testing.assert_allclose(stats.loss, [e.loss for e in expected], atol=1e-5)
    np.testing.assert_allclose(stats.fusion_loss, [e.fusion_loss for e in expected], atol=1e-5)
    np.testing.assert_allclose(stats.unimodal_losses, [e.unimodal_losses for e in expected], atol=1e-5)
    np.testing.assert_allclose(stats.status, [e.status for e in expected], atol=1e-5)


def _assert_scores_match(batched, singles, split):
    fused, per_modality, status = batched.scores(split)
    for i, single in enumerate(singles):
        fused_i, per_modality_i, status_i = single.scores(split)
        assert fused[i] == pytest.approx(fused_i, abs=1e-5)
        np.testing.assert_allclose(per_modality[i], list(per_modality_i.values()), atol=1e-5)
        np.testing.assert_allclose(status[i], status_i, atol=1e-5)


@pytest.mark.parametrize("probe_size", [0, 20])
def test_each_learner_matches_a_separate_learner_on_its_own_task(probe_size):
    a, b, c, d = (_task(s) for s in (1, 2, 3, 4))
    tasks, seeds = [a, b, a, c], [5, 6, 7, 8]  # a twice: one copy of its data, two learners
    config = LearnerConfig(batch_size=16, lr=0.05, momentum=0.9, lr_decay_every=3)
    singles = [Learner(t, config, seed=s, probe_size=probe_size) for t, s in zip(tasks, seeds, strict=True)]
    batched = BatchedLearner(a, config, len(tasks), probe_size=probe_size, tasks=tasks)
    for i, s in enumerate(seeds):
        batched.reset_learner(i, s)
    assert len(batched.train_split) == 3 * len(a.splits["train"])  # a, b and c once each
    counts = np.array([[4, 16], [16, 2], [9, 9], [0, 12]])
    for _ in range(4):
        _assert_stats_match(batched.step(counts), [s.step(n) for s, n in zip(singles, counts, strict=True)])
    _assert_scores_match(batched, singles, "val")
    _assert_scores_match(batched, singles, "test")
    if probe_size:
        np.testing.assert_allclose(batched.probe_status(), [s.probe_status() for s in singles], atol=1e-5)
    for i, single in enumerate(singles):
        for key, value in single.model.state_dict().items():
            torch.testing.assert_close(batched.learner_state(i)[key], value, atol=1e-5, rtol=1e-5)

    # learner 1 moves to task d; the others go on where they were (their index maps follow their data)
    batched.reset_learner(1, 9, task=d)
    singles[1] = Learner(d, config, seed=9, probe_size=probe_size)
    assert batched.task_of(1) is d and batched.task_of(3) is c
    for _ in range(3):
        _assert_stats_match(batched.step(counts), [s.step(n) for s, n in zip(singles, counts, strict=True)])
    _assert_scores_match(batched, singles, "val")


def test_one_task_keeps_the_shared_data_path():
    a = _task(1)
    batched = BatchedLearner(a, LearnerConfig(batch_size=16), 3, tasks=[a, a, a])
    assert batched.tasks is None
    assert batched.train_split.features["weak"].data_ptr() == a.splits["train"].features["weak"].data_ptr()


def test_tasks_of_unequal_shapes_are_refused():
    a = _task(1)
    config = LearnerConfig(batch_size=16)
    assert task_shape_key(a) == task_shape_key(_task(2))
    with pytest.raises(ValueError, match=r"task 1 \('synthetic'\) differs in its modalities"):
        BatchedLearner(a, config, 2, tasks=[a, _task(2, n_weak=2)])
    with pytest.raises(ValueError, match="differs in its split sizes and feature shapes"):
        check_equal_shapes([a, _task(1, weak_dim=8)])
    with pytest.raises(ValueError, match="differs in its split sizes and feature shapes"):
        check_equal_shapes([a, _task(1, n_samples=400)])
    with pytest.raises(ValueError, match="differs in its encoder parameter shapes;"):
        check_equal_shapes([a, _task(1, hidden_dim=8)])
    batched = BatchedLearner(a, config, 2)
    with pytest.raises(ValueError, match="one task per learner"):
        batched.set_tasks([a])
    with pytest.raises(ValueError, match="differs in its modalities"):
        batched.reset_learner(0, 0, task=_task(2, n_weak=2))


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
