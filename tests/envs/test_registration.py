"""Env registration: the shipped table, user specs (and the ones that name code), overrides merged into the
spec key by key, nothing read at import."""

from pathlib import Path

import gymnasium as gym
import pytest
import yaml
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from dus_gym.core.config import ConfigError
from dus_gym.envs.registration import register_envs
from tests.helpers import EVIL, marker_kwargs


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


def test_user_spec_registers_and_bad_specs_fail(tmp_path):
    spec = {"env_id": "dus_gym/TinyTest-v0", "task": "tests.tasks.test_init:_tiny_task", "n_iterations": 20,
            "env": {"iterations_per_step": 10}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(spec))
    with pytest.warns(UserWarning, match="names the task 'tests.tasks.test_init:_tiny_task'"):
        assert register_envs(tmp_path) == []  # a spec is a file: its module:function task needs the opt-in
    assert register_envs(tmp_path, allow_task_import=True) == ["dus_gym/TinyTest-v0"]
    env = gym.make("dus_gym/TinyTest-v0")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (9,)
    sb3_check_env(env.unwrapped)
    for bad, message in [({"env_id": "dus_gym/Bad", "task": "synthetic"}, "version"),
                         ({"env_id": "dus_gym/Bad-v0", "task": "synthetic", "env": {"n_mn": 3}}, "did you mean"),
                         ({"env_id": "dus_gym/Bad-v0", "task": "synthetic", "env": {"n_min": 300}}, "n_min"),
                         ({"env_id": "dus_gym/Bad-v0", "task": "synthetc"}, "unknown task 'synthetc' \\(did you mean "
                                                                            "'synthetic'\\?\\)")]:
        folder = tmp_path / message.replace(" ", "_")
        folder.mkdir()
        (folder / "bad.yaml").write_text(yaml.safe_dump(bad))
        with pytest.warns(UserWarning, match=message):
            assert register_envs(folder) == []  # reported and skipped
    with pytest.raises(ConfigError, match="not found"):
        register_envs(Path(tmp_path / "nowhere"))


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


def test_env_specs_naming_module_function_tasks_are_skipped_unless_trusted(tmp_path, recwarn):
    import gymnasium as gym

    from dus_gym import register_envs

    (tmp_path / "evil.yaml").write_text(yaml.safe_dump({"env_id": "dus_gym/Evil15-v0", "task": EVIL,
                                                        "task_kwargs": marker_kwargs(tmp_path)}))
    (tmp_path / "broken.yaml").write_text("env_id: [unclosed\n")
    (tmp_path / "good.yaml").write_text(yaml.safe_dump({"env_id": "dus_gym/Good15-v0", "task": "synthetic",
                                                        "task_kwargs": {"hidden_dim": 4}, "n_iterations": 4}))
    assert register_envs(tmp_path) == ["dus_gym/Good15-v0"]  # the others are reported and skipped
    messages = " ".join(str(w.message) for w in recwarn)
    assert "evil.yaml skipped" in messages and "broken.yaml skipped" in messages
    assert "dus_gym/Evil15-v0" not in gym.registry
    assert register_envs(tmp_path, allow_task_import=True) == ["dus_gym/Evil15-v0", "dus_gym/Good15-v0"]
    with pytest.raises(ValueError, match="not a function that returns"):
        gym.make("dus_gym/Evil15-v0")
    assert not (tmp_path / "pwned").exists()
    gym.make("dus_gym/Good15-v0").close()


def test_a_user_task_replaces_a_shipped_ids_task_with_one_argument():
    env = gym.make("dus_gym/Synthetic-v0", task="tests.tasks.test_init:_tiny_task", n_iterations=20)
    assert env.unwrapped.task.name == "tiny" and env.unwrapped.task.modalities == ("a", "b")
    env.reset(seed=0)
    env.step(env.action_space.sample())
    tiny = gym.make("dus_gym/Synthetic-v0", task="tests.tasks.test_init:_tiny_task", task_kwargs={"n": 30})
    assert len(tiny.unwrapped.task.splits["train"]) == 30
    with pytest.raises(ValueError, match="n_samples"):  # without replacement, the spec's task keeps its kwargs
        gym.make("dus_gym/Synthetic-v0", task_kwargs={"n_samples": -1})


def test_spec_kwargs_hold_the_effective_settings_and_remake_the_same_env():
    env = gym.make("dus_gym/Synthetic-v0", n_iterations=20, learner={"lr": 0.07})
    kwargs = env.spec.kwargs
    assert kwargs["spec"] == "synthetic.yaml" and kwargs["n_iterations"] == 20
    assert kwargs["learner"]["lr"] == 0.07 and kwargs["learner"]["batch_size"] == 64  # the spec's, merged
    assert kwargs["task"] == "synthetic" and kwargs["iterations_per_step"] == env.unwrapped.config.iterations_per_step
    again = gym.make(env.spec)
    assert again.spec.kwargs == kwargs
    assert (env.reset(seed=1)[0] == again.reset(seed=1)[0]).all()


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


def test_env_overrides_merge_into_the_spec_key_by_key():
    from dus_gym.envs.registration import env_run_config, spec_kwargs

    merged = spec_kwargs("dus_gym/Synthetic-v0", {"learner": {"device": "cpu"}, "task_kwargs": {"hidden_dim": 8}})
    assert merged["learner"]["lr"] == 0.05 and merged["learner"]["device"] == "cpu"
    assert merged["task_kwargs"]["hidden_dim"] == 8 and merged["task_kwargs"]["dominant_dim"] == 1024
    config = env_run_config("dus_gym/Synthetic-v0", {"learner": {"lr": 0.01}, "task_kwargs": {"hidden_dim": 8}},
                            Path("runs"))
    assert config.learner.lr == 0.01 and config.learner.weight_decay == 1e-4
    assert config.task_kwargs["hidden_dim"] == 8 and config.task_kwargs["dominant_dim"] == 1024


def test_a_spec_overridden_onto_a_gpu_is_nondeterministic():
    assert gym.make("dus_gym/Synthetic-v0").spec.nondeterministic is False  # registered for the CPU
    for device in ("cuda", "auto"):  # cuda is not needed: the learner is built at reset
        env = gym.make("dus_gym/Synthetic-v0", learner={"device": device})
        assert env.spec.nondeterministic is True and env.unwrapped.spec.nondeterministic is True
        assert env.spec.kwargs["learner"]["device"] == device  # the effective settings, the override merged in
