"""Bad input gives one clear line (CLI, exit 2) or a clear exception (library, env): one test per case.

(An unknown ``--method`` is validated where that option lives.)
"""

import json
import pickle
import re

import numpy as np
import pytest
import torch
import yaml

from dus_gym.cli import main
from dus_gym.core.config import ConfigError, LearnerConfig
from dus_gym.tasks import MultimodalSplit, Task, make_task, register_task
from dus_gym.tasks.base import MLPEncoder

TINY = ["--iterations", "4", "--no-progress", "--set", "eval_every=4", "--set", "tensorboard=false",
        "--set", "task_kwargs.hidden_dim=8"]


def one_line(capsys, argv, tmp_path) -> str:
    """Run the CLI, expect exit 2 and exactly one 'dus-gym: error:' line; return it."""
    own_dir = argv[0] in ("run", "train-policy") and "--resume" not in argv and "--run-dir" not in argv
    code = main([*argv, "--run-dir", str(tmp_path / "runs")] if own_dir else argv)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, err
    assert err.startswith("dus-gym: error:") and len(err.splitlines()) == 1, err
    assert "Traceback" not in captured.err
    return err


# --- names: task, sampler, env id, config keys -------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["run", "--task", "mfet"], "unknown task 'mfet' (did you mean 'mfeat'?)"),
    (["run", "--task", "synthetic", "--sampler", "heuristc"], "unknown sampler 'heuristc' (did you mean 'heuristic'?)"),
    (["train-policy", "--env", "dus_gym/Synthetc-v0", "--no-evaluate"], "did you mean 'dus_gym/Synthetic-v0'"),
    (["run", "--set", "learner.lrr=0.1"], "unknown config key 'learner.lrr' (did you mean 'lr'?)"),
    (["run", "--set", "n_iteration=5"], "unknown config key 'n_iteration' (did you mean 'n_iterations'?)"),
    (["run", "--task", "synthetic", "--set", "task_kwargs.hiden_dim=8"], "unknown task_kwargs key 'hiden_dim' "
                                                                         "(did you mean 'hidden_dim'?)"),
    (["run", "--sampler", "heuristic", "--set", "sampler_kwargs.alpah=3"], "unknown sampler_kwargs key 'alpah' "
                                                                           "(did you mean 'alpha'?)"),
    (["train-policy", "--env-kwargs", "iterations_per_stp=10", "--no-evaluate"],
     "unknown env kwarg 'iterations_per_stp' for dus_gym/Synthetic-v0 (did you mean 'iterations_per_step'?)"),
    (["run", "--set", "learner.lr"], "must look like key=value"),
])
def test_unknown_names_and_keys_suggest_the_nearest(argv, message, capsys, tmp_path):
    assert message in one_line(capsys, argv, tmp_path)


def test_unknown_ppo_hyperparameter_suggests_the_nearest(capsys, tmp_path):
    hp = tmp_path / "ppo.yml"
    hp.write_text(yaml.safe_dump({"default": {"n_step": 32}}))
    err = one_line(capsys, ["train-policy", "-conf", str(hp), "--no-evaluate"], tmp_path)
    assert "unknown key 'n_step'" in err and "did you mean 'n_steps'" in err


def test_malformed_config_file(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("learner: {lr: [unclosed\n")
    assert "is not valid YAML" in one_line(capsys, ["run", "--config", str(bad)], tmp_path)
    bad.write_text("- just\n- a list\n")
    assert "must hold a mapping" in one_line(capsys, ["run", "--config", str(bad)], tmp_path)


# --- types and ranges ----------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["run", "--set", "learner.batch_size=many"], "'learner.batch_size' must be an integer"),
    (["run", "--set", "tensorboard=maybe"], "'tensorboard' must be true or false"),
    (["run", "--task", "synthetic", "--set", "task_kwargs.hidden_dim=wide"], "'task_kwargs.hidden_dim' must be an "
                                                                             "integer"),
    (["run", "--sampler", "heuristic", "--set", "sampler_kwargs.alpha=high"], "'sampler_kwargs.alpha' must be a"),
    (["run", "--sampler", "constant", "--set", "sampler_kwargs.counts=[-8,64]"], "non-negative counts"),
    (["run", "--set", "learner.count_sizes=[-16,64]"], "count_sizes must be positive"),
    (["run", "--sampler", "heuristic", "--set", "sampler_kwargs.n_min=300"], "n_min <= n_max"),
    (["run", "--set", "env.n_min=300"], "n_min <= n_max"),
    (["run", "--iterations", "0"], "n_iterations must be >= 1"),
    (["run", "--epochs", "0"], "epochs must be > 0"),
    (["run", "--set", "learner.batch_size=0"], "batch_size must be >= 1"),
    (["run", "--set", "learner.lr=-0.1"], "lr must be a positive number"),
    (["run", "--set", "checkpoint_every=0"], "checkpoint_every must be >= 1"),
    (["run", "--method", "ogm-ge", "--set", "learner.method_kwargs.ge=maybe"], "'learner.method_kwargs.ge' must be "
                                                                              "true or false"),
    (["run", "--method", "mmpareto", "--set", "learner.method_kwargs.gamma=abc"], "method_kwargs.gamma' must be a "
                                                                                  "number"),
    (["run", "--method", "ogm-ge", "--set", "learner.method_kwargs.alpha=.nan"], "must be finite numbers"),
    (["run", "--method", "mla", "--set", "learner.method_kwargs.alpha=1"], "unknown learner.method_kwargs key "
                                                                           "'alpha' (it takes none) (method 'mla')"),
    (["run", "--method", "OGM-GE"], "unknown method 'OGM-GE' (did you mean 'ogm-ge'?)"),
    (["train-policy", "--env-kwargs", "n_iterations=abc", "--no-evaluate"], "'n_iterations' must be an integer"),
    (["train-policy", "-n", "-5", "--no-evaluate"], "n_timesteps must be >= 1"),
    (["bench", "--methods", "mlaa"], "unknown method 'mlaa' (did you mean 'mla'?)"),
    (["bench", "--methods", "ogm-ge", "--method-kwargs", "mla.alpha=1"], "method_kwargs for 'mla', which is not"),
])
def test_wrong_types_and_out_of_range_values(argv, message, capsys, tmp_path):
    assert message in one_line(capsys, argv, tmp_path)


# --- data: missing, empty, corrupt, labels, NaN/inf, sample counts -----------------------------

def test_missing_empty_and_corrupt_data_file(capsys, tmp_path):
    run = ["run", "--task", "mfeat", "--set"]
    assert "mfeat data not found" in one_line(capsys, [*run, f"task_kwargs.data_path={tmp_path / 'no.npz'}"], tmp_path)
    (tmp_path / "empty.npz").write_bytes(b"")
    assert "corrupt or incomplete" in one_line(capsys, [*run, f"task_kwargs.data_path={tmp_path / 'empty.npz'}"],
                                               tmp_path)
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not a zip archive")
    assert "corrupt or incomplete" in one_line(capsys, [*run, f"task_kwargs.data_path={tmp_path / 'bad.npz'}"],
                                               tmp_path)


def test_missing_and_empty_data_root(capsys, tmp_path):
    run = ["run", "--task", "cremad", "--set"]
    assert "data root not found" in one_line(capsys, [*run, f"task_kwargs.root={tmp_path / 'none'}"], tmp_path)
    (tmp_path / "empty").mkdir()
    assert "metadata.json is missing" in one_line(capsys, [*run, f"task_kwargs.root={tmp_path / 'empty'}"], tmp_path)


def _prepared_root(tmp_path, rows: str, audio: np.ndarray):
    root = tmp_path / "cremad"
    (root / "audio").mkdir(parents=True)
    (root / "visual" / "c0").mkdir(parents=True)
    (root / "metadata.json").write_text(json.dumps({"format": "dus-gym-audiovisual", "dataset": "cremad",
                                                    "classes": ["NEU", "HAP"]}))
    (root / "train.csv").write_text(rows)
    (root / "test.csv").write_text("clip,label\nc0,NEU\n")
    np.save(root / "audio" / "c0.npy", audio)
    return root


def test_empty_clip_list(tmp_path):
    root = _prepared_root(tmp_path, "clip,label\n", np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="train.csv lists no clips"):
        make_task("cremad", root=str(root))


def test_nan_in_on_disk_features_names_the_clip(tmp_path):
    from dus_gym.tasks.audiovisual import AudioClips

    root = _prepared_root(tmp_path, "clip,label\nc0,NEU\n", np.array([[0.0, np.inf]], np.float32))
    with pytest.raises(ValueError, match="c0.npy hold NaN/inf"):
        AudioClips(root, ["c0"])[0:1]
    (root / "audio" / "c0.npy").write_bytes(b"\x93NUMPY truncated")
    with pytest.raises(ValueError, match="c0.npy are unreadable"):
        AudioClips(root, ["c0"])[0:1]


def _task(labels=None, a=None, b=None, n=8) -> Task:
    labels = torch.arange(n) % 2 if labels is None else labels
    a = torch.zeros(n, 3) if a is None else a
    b = torch.zeros(n, 2) if b is None else b
    split = MultimodalSplit({"a": a, "b": b}, labels)
    return Task("user", ("a", "b"), 2, {"train": split, "val": split, "test": split},
                {"a": lambda: MLPEncoder(3, 4), "b": lambda: MLPEncoder(2, 4)})


@pytest.mark.parametrize("builder, message", [
    (lambda: _task(labels=torch.tensor([0, 1, 2, 1, 0, 1, 0, 1])), "labels outside \\[0, 1\\]"),
    (lambda: _task(labels=torch.tensor([0, -1, 0, 1, 0, 1, 0, 1])), "labels outside \\[0, 1\\]"),
    (lambda: _task(a=torch.full((8, 3), float("nan"))), "modality 'a' has NaN/inf"),
    (lambda: _task(b=torch.tensor([[float("inf"), 0.0]] * 8)), "modality 'b' has NaN/inf"),
    (lambda: _task(a=torch.zeros(7, 3)), "modality 'a' has 7 samples but there are 8 labels"),
])
def test_user_data_errors_are_one_line_from_the_cli(builder, message, capsys, tmp_path):
    register_task("user-data", builder)
    err = one_line(capsys, ["run", "--task", "user-data", "--iterations", "2"], tmp_path)
    assert re.search(message, err)


def test_nan_in_a_shipped_format_data_file(capsys, tmp_path):
    from dus_gym.tasks.mfeat import load_mfeat_arrays

    views, labels = load_mfeat_arrays()
    views["fou"][3, 2] = np.nan
    np.savez(tmp_path / "nan.npz", labels=labels, **views)
    err = one_line(capsys, ["run", "--task", "mfeat", "--set", f"task_kwargs.data_path={tmp_path / 'nan.npz'}"],
                   tmp_path)
    assert "modality 'fou' has NaN/inf" in err


# --- the env's action ------------------------------------------------------------------------------

@pytest.mark.parametrize("action, message", [
    (np.zeros(3, np.float32), "shape \\(3,\\)"),
    (np.array(["a", "b"]), "dtype <U1"),
    (np.array([np.nan, 0.0], np.float32), "NaN/inf"),
    (np.array([2.0, 0.0], np.float32), "outside \\[-1, 1\\]"),
    ([[0.0], [0.0, 1.0]], "not an array"),
])
def test_env_action_errors_name_the_expected_space(action, message):
    from dus_gym.rl.env import DUSEnv
    from dus_gym.samplers.action import ActionError

    env = DUSEnv(n_iterations=4, iterations_per_step=2, task_kwargs={"hidden_dim": 8})
    env.reset(seed=0)
    with pytest.raises(ActionError, match=f"{message}.*expected an action in Box\\(-1.0, 1.0, \\(2,\\), float32\\)"):
        env.step(action)


# --- checkpoints and policies of another version or task -------------------------------------------

def test_learner_checkpoint_of_another_version_or_task(tmp_path):
    from dus_gym.core.learner import Learner

    task = make_task("synthetic", hidden_dim=8)
    learner = Learner(task, LearnerConfig(), seed=0)
    learner.save(tmp_path / "learner.pt")
    payload = torch.load(tmp_path / "learner.pt", weights_only=True)
    torch.save({**payload, "version": 99}, tmp_path / "v99.pt")
    with pytest.raises(ValueError, match="format version 99"):
        learner.load(tmp_path / "v99.pt")
    other = Learner(make_task("synthetic", hidden_dim=8, n_weak=2), LearnerConfig(), seed=0)
    with pytest.raises(ValueError, match="saved for task 'synthetic' with modalities \\['dominant', 'weak'\\]"):
        other.load(tmp_path / "learner.pt")


def test_env_start_checkpoint_of_another_task(tmp_path):
    from dus_gym.core.learner import Learner
    from dus_gym.rl.env import DUSEnv

    Learner(make_task("synthetic", hidden_dim=8), LearnerConfig(), seed=0).save(tmp_path / "learner.pt")

    env = DUSEnv(task="mfeat", n_iterations=4, start_checkpoint=str(tmp_path / "learner.pt"))
    with pytest.raises(ValueError, match="saved for task 'synthetic'.*not 'mfeat'"):
        env.reset(seed=0)


def test_run_checkpoint_of_another_version_is_one_line(capsys, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.yaml").write_text("task: synthetic\nn_iterations: 5\n")
    torch.save({"format": "dus-gym-run", "version": 99, "config": {}, "state": {}}, folder / "checkpoint.pt")
    assert "format version 99" in one_line(capsys, ["run", "--resume", str(folder)], tmp_path)


def _policy_folder(tmp_path, **changes):
    folder = tmp_path / "policy"
    folder.mkdir(exist_ok=True)
    settings = {"format": "dus-gym-policy", "version": 1, "modalities": ["dominant", "weak"], "batch_size": 64,
                "env": {"n_min": 8, "n_max": 256, "action_type": "box", "count_levels": [8, 256],
                        "iterations_per_step": 10}, **changes}
    (folder / "policy.json").write_text(json.dumps(settings))
    (folder / "policy.zip").write_bytes(b"PK\x03\x04 not a model")
    return folder


@pytest.mark.parametrize("changes, message", [
    ({"version": 2}, "format version 2"),
    ({"modalities": ["a", "b", "c"]}, "trained for 3 modalities"),
    ({"batch_size": 32}, "trained with B = 32"),
    ({}, "not a loadable SB3 PPO model"),
])
def test_policy_of_another_version_or_task_or_corrupt(changes, message, capsys, tmp_path):
    folder = _policy_folder(tmp_path, **changes)
    err = one_line(capsys, ["run", "--task", "synthetic", "--sampler", "ppo", "--policy", str(folder), *TINY], tmp_path)
    assert message in err


# --- safe loading --------------------------------------------------------------------------------

class Payload:
    def __reduce__(self):
        return (print, ("unpickled code ran",))


def test_learner_checkpoint_is_read_weights_only(tmp_path, capsys):
    from dus_gym.core.learner import Learner

    torch.save({"format": "dus-gym-learner", "version": 1, "state": Payload()}, tmp_path / "evil.pt")
    learner = Learner(make_task("synthetic", hidden_dim=8), LearnerConfig(), seed=0)
    with pytest.raises(ValueError, match="not a readable learner checkpoint"):
        learner.load(tmp_path / "evil.pt")
    assert "unpickled code ran" not in capsys.readouterr().out


def test_run_checkpoint_is_read_weights_only(tmp_path, capsys):
    from dus_gym.core.checkpoint import load_run_checkpoint

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump(Payload(), f, protocol=2)
    with pytest.raises(ValueError, match="not a readable run checkpoint"):
        load_run_checkpoint(tmp_path / "evil.pt", {})
    assert "unpickled code ran" not in capsys.readouterr().out


def test_config_yaml_tags_are_not_constructed(capsys, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f'task: synthetic\nlearner: !!python/object/apply:os.system ["touch {marker}"]\n')
    assert "not valid YAML" in one_line(capsys, ["run", "--config", str(evil)], tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("text", ["__import__('os').system('touch pwned')", "dict(net_arch=open('x').read())",
                                  "dict(activation_fn=os.system)"])
def test_zoo_policy_kwargs_strings_are_parsed_not_evaluated(text, tmp_path):
    from dus_gym.rl.hyperparams import load_hyperparams

    hp = tmp_path / "ppo.yml"
    hp.write_text(yaml.safe_dump({"default": {"policy_kwargs": text}}))
    with pytest.raises(ConfigError):
        load_hyperparams(hp, "dus_gym/Synthetic-v0")
