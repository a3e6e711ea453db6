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
from dus_gym.core.task import MLPEncoder
from dus_gym.tasks import MultimodalSplit, Task, make_task, register_task

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
     "unknown env kwarg 'iterations_per_stp' for dus_gym/SyntheticFamily-v1 (did you mean 'iterations_per_step'?)"),
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
    from dus_gym.envs.env import DUSEnv

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
    from dus_gym.core.files import sha256_of

    (folder / "policy.zip").write_bytes(b"PK\x03\x04 not a model")
    settings = {"format": "dus-gym-policy", "version": 2, "modalities": ["dominant", "weak"], "batch_size": 64,
                "env": {"n_min": 8, "n_max": 256, "action_type": "box", "count_levels": [8, 256],
                        "iterations_per_step": 10}, "digests": {"policy.zip": sha256_of(folder / "policy.zip")},
                **changes}
    (folder / "policy.json").write_text(json.dumps(settings))
    return folder


@pytest.mark.parametrize("changes, message", [
    ({"version": 1}, "format version 1, this dus-gym reads version 2; retrain it"),
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
    from dus_gym.agents.hyperparams import load_hyperparams

    hp = tmp_path / "ppo.yml"
    hp.write_text(yaml.safe_dump({"default": {"policy_kwargs": text}}))
    with pytest.raises(ConfigError):
        load_hyperparams(hp, "dus_gym/Synthetic-v0")


# --- issue 15: nothing lost, nothing run that was not meant to run ---------------------------------

def _dus_gym_process(argv, cwd):
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", "import sys; from dus_gym.cli import main; sys.exit(main())",
                             *argv], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_parallel_sweep_of_8_runs_gives_8_folders_with_matching_config_and_results(tmp_path):
    # same task, sampler and seed (so the same folder name and second), different --set: the reproduction
    procs = [_dus_gym_process(["run", "--task", "synthetic", "--sampler", "constant", "--seed", "0", "--iterations",
                               "3", "--run-dir", "runs", "--no-progress", "--set", "tensorboard=false",
                               "--set", "task_kwargs.hidden_dim=4", "--set", "eval_every=3",
                               "--set", f"sampler_kwargs.counts=[{8 + k},16]"], tmp_path) for k in range(8)]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    folders = sorted((tmp_path / "runs").iterdir())
    assert len(folders) == 8
    seen = set()
    for folder in folders:
        config = yaml.safe_load((folder / "config.yaml").read_text())
        results = json.loads((folder / "results.json").read_text())
        dominant = config["sampler_kwargs"]["counts"][0]
        assert results["mean_counts"]["dominant"] == dominant  # this folder's results are this config's run
        seen.add(dominant)
    assert seen == set(range(8, 16))


def test_run_folders_made_at_once_by_many_threads_are_distinct(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from dus_gym.core.files import new_run_folder

    with ThreadPoolExecutor(8) as pool:
        folders = list(pool.map(lambda _: new_run_folder(tmp_path, "same-name"), range(16)))
    assert len(set(folders)) == 16 and all(f.is_dir() for f in folders)


def test_bench_overrides_win_over_the_sampler_file_and_reach_only_the_samplers_that_take_them():
    from dus_gym.experiments.bench import bench_config_from_args, plan_cells

    bench = bench_config_from_args({"tasks": ["synthetic"], "methods": ["joint"], "samplers": ["uniform", "heuristic"],
                                    "seeds": [0], "overrides": {"sampler_kwargs": {"alpha": 5},
                                                                "task_kwargs": {"hidden_dim": 4}}})
    kwargs = {(c.sampler, c.alone): c.config["sampler_kwargs"] for c in plan_cells(bench)}
    assert kwargs[("heuristic", None)]["alpha"] == 5  # agents/heuristic.yml says 10
    assert kwargs[("uniform", None)] == {}
    assert kwargs[("dominant", "dominant")] == {"counts": [64, 0]}


@pytest.mark.parametrize("argv, message", [
    (["bench", "--samplers", "uniform", "--set", "sampler_kwargs.alpha=5"], "taken by none of the samplers"),
    (["bench", "--seeds", "1", "1"], "seeds must be distinct"),
    (["compare", "--seeds", "0", "0"], "seeds must be distinct"),
    (["compare", "--samplers", "uniform", "--set", "sampler_kwargs.alpah=5"], "taken by none of the samplers"),
    (["train-policy", "--eval-seeds", "5", "5", "--no-evaluate"], "eval_seeds must be distinct"),
    (["run", "--lr", "0.01"], "--lr changes the learning rate of a resumed run"),
    (["bench", "--samplers", "ppo", "--policy", "nowhere", "--tasks", "synthetic"], "no saved policy at"),
    (["bench", "--samplers", "heuristic", "--set", "sampler_kwargs.alpha=500", "--tasks", "synthetic"],
     "alpha must be in"),
])
def test_duplicate_seeds_and_bench_settings_fail_before_any_run(argv, message, capsys, tmp_path):
    extra = {"bench": ["--no-progress", "--out", str(tmp_path / "bench")], "compare": ["--no-progress"]}
    err = one_line(capsys, [*argv, *extra.get(argv[0], [])], tmp_path)
    assert message in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("results.json"))


@pytest.mark.parametrize("flag", ["--method", "--run-dir"])
def test_run_resume_refuses_flags_it_would_ignore(flag, capsys, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.yaml").write_text("task: synthetic\nn_iterations: 5\n")
    value = "joint" if flag == "--method" else str(tmp_path / "other")
    err = one_line(capsys, ["run", "--resume", str(folder), flag, value], tmp_path)
    assert f"drop {flag}" in err


# finite floats: every reward weight, from the command line and from Python

REWARD_WEIGHTS = ("reward_delta_weight", "reward_cmd_weight", "reward_terminal_weight", "divergence_penalty")


@pytest.mark.parametrize("key", REWARD_WEIGHTS)
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_nan_or_inf_reward_weights_are_refused_on_the_command_line(key, value, capsys, tmp_path):
    err = one_line(capsys, ["run", "--task", "synthetic", "--set", f"env.{key}={value}"], tmp_path)
    assert f"config key 'env.{key}'" in err and "finite" in err


@pytest.mark.parametrize("key", REWARD_WEIGHTS)
def test_nan_reward_weights_are_refused_in_python_and_by_the_env(key):
    from dus_gym.core.config import EnvConfig
    from dus_gym.envs.env import DUSEnv

    with pytest.raises(ConfigError, match=f"'env.{key}' is nan"):
        EnvConfig(**{key: float("nan")})
    with pytest.raises(ConfigError, match="finite"):
        DUSEnv(n_iterations=4, task_kwargs={"hidden_dim": 4}, **{key: float("inf")})


# budgets and counts: bounded, whole numbers

@pytest.mark.parametrize("argv, message", [
    (["run", "--epochs", "inf"], "'epochs' is inf"),
    (["run", "--epochs", "nan"], "'epochs' is nan"),
    (["run", "--set", "epochs=.inf", "--set", "n_iterations=null"], "'epochs' is inf"),
    (["run", "--iterations", "100000000000"], "n_iterations must be >= 1 and <= 10_000_000"),
    (["run", "--task", "synthetic", "--epochs", "1e9", "--set", "task_kwargs.hidden_dim=4"], "lower epochs"),
    (["run", "--sampler", "constant", "--set", "sampler_kwargs.counts=[1000000000000,64]"], "counts up to"),
    (["run", "--sampler", "constant", "--set", "sampler_kwargs.counts=[8.5,64]"], "whole numbers"),
    (["run", "--sampler", "schedule", "--set", "sampler_kwargs.schedule=[[8,64],[8.5,64]]"], "whole numbers"),
    (["run", "--set", "env.n_max=1000000000000"], "n_max <= 1_000_000"),
    (["run", "--set", "learner.batch_size=1000000000"], "batch_size must be >= 1 and <= 1_000_000"),
    (["run", "--set", "learner.count_sizes=[16,10000000]"], "count_sizes must hold non-negative counts up to"),
    (["run", "--sampler", "heuristic", "--set", "sampler_kwargs.n_max=1000000000"], "n_max <= 1_000_000"),
    (["run", "--set", "env.count_levels=[8.5,16]"], "must be an integer"),
])
def test_budgets_and_counts_are_bounded_whole_numbers(argv, message, capsys, tmp_path):
    assert message in one_line(capsys, argv, tmp_path)


def test_yaml_alias_bomb_gives_a_short_line(capsys, tmp_path):
    bomb = tmp_path / "bomb.yaml"
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"{chr(97 + i)}: &{chr(97 + i)} [*{chr(96 + i)}, *{chr(96 + i)}, *{chr(96 + i)}, "
                     f"*{chr(96 + i)}, *{chr(96 + i)}, *{chr(96 + i)}, *{chr(96 + i)}, *{chr(96 + i)}, *{chr(96 + i)}]")
    lines.append("seed: *i")  # 9^9 leaves when expanded
    bomb.write_text("\n".join(lines) + "\n")
    assert len(bomb.read_bytes()) < 500
    err = one_line(capsys, ["run", "--config", str(bomb)], tmp_path)
    assert "unknown config key 'a'" in err and len(err) < 2500


def test_values_in_messages_are_bounded():
    from dus_gym.core.config import RunConfig, from_dict

    nested = [[list(range(10_000))] * 10_000] * 3
    with pytest.raises(ConfigError) as info:
        from_dict(RunConfig, {"seed": nested})
    assert len(str(info.value)) < 400


# the trust boundary of task code

EVIL = "os:system"


def _marker_kwargs(tmp_path):
    return {"command": f"touch {tmp_path / 'pwned'}"}


@pytest.mark.parametrize("where", ["config", "run folder", "bench config", "ppo yaml", "policy args"])
def test_files_naming_module_function_tasks_run_nothing(where, capsys, tmp_path):
    config = {"task": EVIL, "task_kwargs": _marker_kwargs(tmp_path), "n_iterations": 2}
    if where == "config":
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
        argv = ["run", "--config", str(tmp_path / "c.yaml")]
    elif where == "run folder":
        folder = tmp_path / "victim-run"
        folder.mkdir()
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
        argv = ["run", "--resume", str(folder)]
    elif where == "bench config":
        (tmp_path / "b.yaml").write_text(yaml.safe_dump({"tasks": [EVIL], "overrides": {"task_kwargs": config[
            "task_kwargs"]}}))
        argv = ["bench", "--config", str(tmp_path / "b.yaml"), "--out", str(tmp_path / "bench")]
    elif where == "ppo yaml":
        (tmp_path / "ppo.yml").write_text(yaml.safe_dump({"default": {"env_kwargs": {"task": EVIL,
                                                                                    "task_kwargs": config[
                                                                                        "task_kwargs"]}}}))
        argv = ["train-policy", "-conf", str(tmp_path / "ppo.yml"), "--no-evaluate"]
    else:
        folder = tmp_path / "policy-run"
        folder.mkdir()
        (folder / "args.yml").write_text(yaml.safe_dump({"env_id": "dus_gym/Synthetic-v0", "env_kwargs": {
            "task": EVIL, "task_kwargs": config["task_kwargs"]}}))
        (folder / "config.yml").write_text(yaml.safe_dump({"dus_gym/Synthetic-v0": {}}))
        argv = ["train-policy", "--resume", str(folder)]
    err = one_line(capsys, argv, tmp_path)
    assert f"names the task '{EVIL}'" in err and "--allow-task-import" in err
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("argv", [
    lambda t: ["run", "--task", EVIL, "--set", f"task_kwargs.command=touch {t / 'pwned'}"],
    lambda t: ["run", "--config", str(t / "c.yaml"), "--allow-task-import"],
    lambda t: ["run", "--task", "builtins:eval", "--set", f"task_kwargs.source=open('{t / 'pwned'}', 'w')"],
])
def test_builtins_are_never_called_as_task_builders(argv, capsys, tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"task": EVIL, "task_kwargs": _marker_kwargs(tmp_path)}))
    err = one_line(capsys, argv(tmp_path), tmp_path)
    assert "not a function that returns a dus_gym.tasks.Task" in err
    assert not (tmp_path / "pwned").exists()


def test_env_specs_naming_module_function_tasks_are_skipped_unless_trusted(tmp_path, recwarn):
    import gymnasium as gym

    from dus_gym import register_envs

    (tmp_path / "evil.yaml").write_text(yaml.safe_dump({"env_id": "dus_gym/Evil15-v0", "task": EVIL,
                                                        "task_kwargs": _marker_kwargs(tmp_path)}))
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


def _user_module(tmp_path, name, body):
    (tmp_path / f"{name}.py").write_text(body)
    return f"{name}:build"


@pytest.mark.parametrize("body, message", [
    ("def build():\n    return 42\n", "returned int, not a dus_gym.tasks.Task"),
    ("def build():\n    return {}['root']\n", "failed: KeyError: 'root'"),
    ("import torch\nfrom tests_helpers_missing import x\n", "cannot import task builder"),
    ("import torch\nfrom dus_gym.tasks import MultimodalSplit, Task\n"
     "def build():\n    s = MultimodalSplit({'a': torch.zeros(4, 2), 'b': torch.zeros(4, 2)}, torch.zeros(4).long())\n"
     "    return Task('u', ('a', 'b'), 2, {'train': s, 'val': s, 'test': s},\n"
     "                {'a': lambda: torch.nn.Linear(2, 3), 'b': lambda: torch.nn.Linear(2, 3)})\n",
     "must be an nn.Module with a positive integer attribute out_dim"),
])
def test_a_users_builder_that_fails_is_one_line(body, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = f"user15_{abs(hash(body)) % 10**8}"
    task = _user_module(tmp_path, name, body)
    err = one_line(capsys, ["run", "--task", task, "--iterations", "2"], tmp_path)
    assert message in err


def test_working_folder_is_searched_after_the_installed_packages_and_only_for_the_task(tmp_path, monkeypatch):
    import sys

    monkeypatch.chdir(tmp_path)
    (tmp_path / "json.py").write_text("raise SystemExit('a planted json.py ran')\n")
    task = _user_module(tmp_path, "user15_ok", "from dus_gym.tasks.synthetic import make_synthetic\n"
                                               "def build(**kw):\n    return make_synthetic(hidden_dim=4)\n")
    before = list(sys.path)
    assert main(["run", "--task", task, "--iterations", "2", "--no-progress", "--run-dir", str(tmp_path / "r"),
                 "--set", "tensorboard=false"]) == 0
    assert sys.path == before


def test_the_console_script_does_not_import_from_the_working_folder(tmp_path):
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    script = shutil.which("dus-gym") or str(Path(sys.executable).parent / "dus-gym")
    if not Path(script).is_file():
        pytest.skip("the dus-gym console script is not installed")
    (tmp_path / "tqdm.py").write_text(f"open({str(tmp_path / 'pwned')!r}, 'w')\n")
    proc = subprocess.run([script, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "pwned").exists()


def test_installed_entry_point_tasks_may_be_named_by_files(tmp_path, capsys, monkeypatch):
    from importlib.metadata import EntryPoint

    import dus_gym.tasks as tasks

    points = [EntryPoint("plugin15", "dus_gym.tasks.synthetic:make_synthetic", tasks.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(tasks.metadata, "entry_points", lambda group: points if group == tasks.ENTRY_POINT_GROUP
                        else [])
    tasks.entry_point_tasks.cache_clear()
    try:
        (tmp_path / "c.yaml").write_text(yaml.safe_dump({"task": "plugin15", "task_kwargs": {"hidden_dim": 4},
                                                         "n_iterations": 2, "tensorboard": False}))
        assert main(["run", "--config", str(tmp_path / "c.yaml"), "--no-progress", "--run-dir", str(tmp_path)]) == 0
    finally:
        tasks.entry_point_tasks.cache_clear()
        tasks.TASKS._entries.pop("plugin15", None)


# prepared data: clip names are file names, train and test are disjoint

@pytest.mark.parametrize("clip", ["../../victim/evil", "/tmp/evil", "a/b", "..", ".hidden", "a\\b"])
def test_prepare_refuses_clip_names_that_are_paths(clip, capsys, tmp_path):
    src, dst = tmp_path / "raw", tmp_path / "out" / "cremad"
    src.mkdir()
    (src / "train.csv").write_text(f"{clip},NEU\nok,HAP\n")
    (src / "test.csv").write_text("t0,NEU\n")
    err = one_line(capsys, ["prepare", "cremad", str(src), str(dst), "--no-progress"], tmp_path)
    assert "is not a plain file name" in err
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.parent != src]
    assert written == [] and not dst.exists()


def test_prepare_refuses_a_clip_in_both_lists(capsys, tmp_path):
    src = tmp_path / "raw"
    src.mkdir()
    (src / "train.csv").write_text("c0,NEU\nc1,HAP\n")
    (src / "test.csv").write_text("c1,HAP\n")
    assert "in both the train and the test list (c1)" in one_line(
        capsys, ["prepare", "cremad", str(src), str(tmp_path / "out")], tmp_path)


@pytest.mark.parametrize("train, message", [
    ("clip,label\nc0\n", "expected 'clip,label'"),
    ("clip,label\n../c0,NEU\n", "is not a plain file name"),
    ("clip,label\nc0,NEU\n", "in both the train and the test list"),
])
def test_prepared_split_lists_are_checked_by_the_task(train, message, tmp_path):
    root = _prepared_root(tmp_path, train, np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match=message):
        make_task("cremad", root=str(root))


@pytest.mark.parametrize("metadata", [{}, {"classes": None}, {"classes": ["NEU"]}, {"classes": "NEU,HAP"}])
def test_metadata_without_classes_is_one_line(metadata, capsys, tmp_path):
    root = _prepared_root(tmp_path, "clip,label\nc0,NEU\n", np.zeros((4, 4), np.float32))
    (root / "metadata.json").write_text(json.dumps({"format": "dus-gym-audiovisual", "dataset": "cremad",
                                                    **metadata}))
    err = one_line(capsys, ["run", "--task", "cremad", "--set", f"task_kwargs.root={root}"], tmp_path)
    assert "lacks 'classes'" in err


def test_temporary_files_do_not_follow_a_planted_symlink(tmp_path):
    from dus_gym.tasks.audiovisual.prepare import save_npy_atomic

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "audio").mkdir()
    for name in (".c0.tmp.npy", ".c0.npy.tmp", ".c0.npy.tmp.npy"):  # the fixed names of before
        (tmp_path / "audio" / name).symlink_to(victim)
    save_npy_atomic(tmp_path / "audio" / "c0.npy", np.ones(3, np.float16))
    assert victim.read_text() == "precious"
    assert np.load(tmp_path / "audio" / "c0.npy").tolist() == [1.0, 1.0, 1.0]


def test_a_full_disk_is_one_clear_error_and_leaves_the_old_file(tmp_path):
    import errno

    from dus_gym.core.files import atomic_path

    target = tmp_path / "results.json"
    target.write_text("old")
    with pytest.raises(OSError, match="no space left on device.*free space and run again"):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["results.json"]


# damaged files: run checkpoints, bench cells, policies

@pytest.mark.parametrize("drop", ["history", "rng", "learner"])
def test_run_checkpoint_lacking_keys_is_one_line(drop, capsys, tmp_path):
    from dus_gym.core.checkpoint import save_run_checkpoint
    from dus_gym.core.config import RunConfig, from_dict, to_dict

    folder = tmp_path / "run"
    data = {"task": "synthetic", "n_iterations": 6, "task_kwargs": {"hidden_dim": 4}, "tensorboard": False,
            "checkpoint_every": 3, "run_dir": str(folder)}
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(data))
    config = to_dict(from_dict(RunConfig, data))
    state = {"iteration": 3, "train_seconds": 1.0, "learner": {}, "sampler": {}, "monitor": {},
             "counts": torch.zeros(2), "history": torch.zeros(3, 2), "cmd_history": torch.zeros(3, 2),
             "last_status": torch.zeros(2), "val_curve": [], "rng": {}}
    state.pop(drop)
    save_run_checkpoint(folder / "checkpoint.pt", state, config)
    err = one_line(capsys, ["run", "--resume", str(folder)], tmp_path)
    assert "checkpoint.pt is incomplete or damaged" in err


@pytest.mark.parametrize("damage", ["truncated npz", "npz of garbage", "record without summary", "summary without test",
                                    "record of a list"])
def test_a_damaged_bench_cell_is_run_again(damage, tmp_path):
    from dus_gym.experiments.bench import bench_config_from_args, run_bench

    bench = bench_config_from_args({"tasks": ["synthetic"], "methods": ["joint"], "samplers": ["uniform"],
                                    "seeds": [0], "n_iterations": 2, "alone": False, "workers": 1,
                                    "out_dir": str(tmp_path), "overrides": {"task_kwargs": {"hidden_dim": 4}}})
    assert run_bench(bench, progress=False)["ran"] == 1
    cell = tmp_path / "cells" / "synthetic_joint_uniform_seed0"
    npz, record = cell.with_suffix(".npz"), cell.with_suffix(".json")
    if damage == "truncated npz":
        npz.write_bytes(npz.read_bytes()[:40])
    elif damage == "npz of garbage":
        npz.write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    elif damage == "record of a list":
        record.write_text("[1, 2]")
    else:
        data = json.loads(record.read_text())
        if damage == "record without summary":
            del data["summary"]
        else:
            del data["summary"]["test"]
        record.write_text(json.dumps(data))
    summary = run_bench(bench, progress=False)
    assert summary["ran"] == 1 and "joint" in summary["table"]
    assert run_bench(bench, progress=False)["ran"] == 0  # repaired


@pytest.mark.parametrize("changes, message", [
    ({"modalities": None}, "lacks a valid 'modalities'"),
    ({"batch_size": "64"}, "lacks a valid 'batch_size'"),
    ({"env": None}, "lacks a valid 'env'"),
    ({"env": {"n_min": 8, "n_max": 256, "action_type": "box", "count_levels": [8, 256]}},
     "lacks a valid 'env.iterations_per_step'"),
    ({"env": {"n_min": 8, "n_max": 256, "count_levels": [8, 256], "iterations_per_step": 10}},
     "lacks a valid 'env.action_type'"),
])
def test_policy_json_lacking_keys_is_one_line(changes, message, capsys, tmp_path):
    folder = _policy_folder(tmp_path, **changes)
    err = one_line(capsys, ["run", "--task", "synthetic", "--sampler", "ppo", "--policy", str(folder), *TINY], tmp_path)
    assert message in err


def test_corrupt_vecnormalize_of_a_policy_is_one_line(tiny_policy, capsys, tmp_path):
    import shutil

    from dus_gym.core.files import sha256_of

    _, trained = tiny_policy
    folder = tmp_path / "policy"
    shutil.copytree(trained, folder)
    (folder / "vecnormalize.pkl").write_bytes(b"\x80\x04\x95 truncated")
    policy = json.loads((folder / "policy.json").read_text())  # a damaged file saved with its digest
    policy["digests"]["vecnormalize.pkl"] = sha256_of(folder / "vecnormalize.pkl")
    (folder / "policy.json").write_text(json.dumps(policy))
    err = one_line(capsys, ["run", "--task", "synthetic", "--sampler", "ppo", "--policy", str(folder), *TINY,
                            "--set", "env.iterations_per_step=10"], tmp_path)
    assert "vecnormalize.pkl is not readable VecNormalize statistics" in err


# policy training: resume with the run's own settings, never rewriting provenance

def _policy_run(tmp_path, **args):
    from dus_gym.core.config import to_dict
    from dus_gym.experiments.train_policy import TrainPolicyConfig

    folder = tmp_path / "ppo-run"
    folder.mkdir()
    config = TrainPolicyConfig(env_id="dus_gym/Synthetic-v0", vec_env="dummy", seed=3,
                               env_kwargs={"iterations_per_step": 10}, **args)
    (folder / "args.yml").write_text(yaml.safe_dump(to_dict(config)))
    (folder / "config.yml").write_text(yaml.safe_dump({config.env_id: {"n_steps": 32}}))
    return folder


@pytest.mark.parametrize("flags, field", [
    (["--seed", "0"], "seed 0 (the run has 3)"),
    (["--env-kwargs", "iterations_per_step=5"], "env_kwargs"),
    (["--env", "dus_gym/MFeat-v0"], "env_id"),
    (["-conf", "other.yml"], "hyperparams"),
    (["--checkpoint-freq", "64"], "checkpoint_freq"),
    (["--eval-freq", "0"], "eval_freq"),
    (["--run-dir", "elsewhere"], "run_dir"),
])
def test_policy_resume_refuses_flags_that_change_the_run(flags, field, capsys, tmp_path):
    folder = _policy_run(tmp_path)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    err = one_line(capsys, ["train-policy", "--resume", str(folder), *flags], tmp_path)
    assert "drop the flags that differ" in err and field in err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_policy_resume_continues_with_the_runs_settings_and_keeps_its_provenance(tmp_path, recwarn):
    from dus_gym.experiments.train_policy import TrainPolicyConfig, train_policy

    hp = tmp_path / "ppo.yml"
    hp.write_text(yaml.safe_dump({"default": {"n_envs": 1, "n_timesteps": 16, "n_steps": 8, "batch_size": 8,
                                              "n_epochs": 1, "normalize": True,
                                              "policy_kwargs": "dict(net_arch=[8])"}}))
    env_kwargs = {"n_iterations": 8, "iterations_per_step": 4, "task_kwargs": {"hidden_dim": 4, "dominant_dim": 8}}
    folder = train_policy(TrainPolicyConfig(env_id="dus_gym/Synthetic-v0", hyperparams=str(hp), vec_env="dummy",
                                            run_dir=str(tmp_path / "runs"),
                                            env_kwargs=env_kwargs, eval_freq=0, checkpoint_freq=8, evaluate=False,
                                            progress=False), argv=["train_policy.py"])
    hp.write_text(yaml.safe_dump({"default": {"n_steps": 4}}))  # edited after the run started: not used by the resume
    provenance = {name: (folder / name).read_bytes() for name in ("args.yml", "config.yml", "command.txt")}
    (folder / "checkpoints" / "ppo_vecnormalize_16_steps.pkl").write_bytes(b"\x80\x04 damaged by a crash")
    # only the total steps change; the run's env kwargs (K = 4) and hyper-parameters (n_steps 8) are its own
    assert main(["train-policy", "--resume", str(folder), "-n", "24", "--no-progress"]) == 0
    assert {name: (folder / name).read_bytes() for name in provenance} == provenance
    assert "train-policy --resume" in (folder / "resumes.txt").read_text()
    assert any("ppo_16_steps.zip could not be loaded" in str(w.message) for w in recwarn)  # fell back to step 8
    policy = json.loads((folder / "policy.json").read_text())
    assert policy["env"]["iterations_per_step"] == 4 and policy["timesteps"] == 24  # 8 + two rollouts of 8


def _default_sigint() -> None:
    """In the child before exec: Ctrl-C as in a terminal. A test runner started in the background (``cmd &``
    from a script) ignores SIGINT, and a child inherits that: it would then rightly ignore the test's Ctrl-C."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_on_train_policy_with_subprocess_envs_is_one_line_and_130(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    hp = tmp_path / "ppo.yml"
    hp.write_text(yaml.safe_dump({"default": {"n_envs": 2, "n_timesteps": 100_000, "n_steps": 4, "batch_size": 8,
                                              "n_epochs": 1, "policy_kwargs": "dict(net_arch=[8])"}}))
    script = Path(__file__).resolve().parents[1] / "train_policy.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), "--env", "dus_gym/Synthetic-v0", "--vec-env", "subproc",
                             "-conf", str(hp), "--no-progress",
                             "--no-evaluate", "--eval-freq", "0", "--checkpoint-freq", "8", "--run-dir",
                             str(tmp_path / "runs"), "--env-kwargs", "n_iterations=8", "iterations_per_step=4",
                             "task_kwargs.hidden_dim=4", "task_kwargs.dominant_dim=8"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=_default_sigint)
    deadline = time.monotonic() + 240
    while not list((tmp_path / "runs").glob("*/checkpoints/ppo_*_steps.zip")):  # the workers are training
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines() == [
        "dus-gym: interrupted; `train_policy.py --resume RUN_FOLDER` continues from the last checkpoint"]


def test_devices_are_used_by_the_dummy_vec_env_too(capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA (the device must be refused)")
    err = one_line(capsys, ["train-policy", "--vec-env", "dummy", "--devices", "cuda:7", "--no-evaluate"], tmp_path)
    assert "device 'cuda:7' asked for but CUDA is not available" in err


def test_three_env_failures_in_a_row_stop_the_run_as_documented():
    import gymnasium as gym

    from dus_gym.envs.wrappers import ErrorRecoveryWrapper

    class Broken(gym.Env):
        observation_space = gym.spaces.Box(-1, 1, (1,))
        action_space = gym.spaces.Box(-1, 1, (1,))
        steps = 0

        def reset(self, *, seed=None, options=None):
            return np.zeros(1, np.float32), {}

        def step(self, action):
            Broken.steps += 1
            raise RuntimeError("broken")

    env = ErrorRecoveryWrapper(Broken())
    env.reset()
    for _ in range(2):  # absorbed: truncated transitions
        assert env.step(np.zeros(1))[3] is True
    with pytest.raises(RuntimeError, match="broken"):
        env.step(np.zeros(1))
    assert Broken.steps == 3


# --- a task spec is a file: it names code only under the opt-in ---------------------------------------

def _family_spec(tmp_path, **changes):
    spec = {"task": "synthetic", "task_kwargs": {"hidden_dim": 4, "n_samples": 300}, "n_iterations": 4,
            "env": {"observation": "modalities", "max_modalities": 3},
            "family": {"generator": "synthetic", "generator_kwargs": {"n_instances": 4}}}
    for key, value in changes.items():
        spec = {**spec, key: {**spec[key], **value} if isinstance(value, dict) and key != "task_kwargs" else value}
    path = tmp_path / "user-family.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _victim(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir(exist_ok=True)
    (victim / "keep.txt").write_text("still here")
    return victim


SPEC_CODE = {
    "generator os:system": lambda t: {"family": {"generator": "os:system",
                                                 "generator_kwargs": {"command": f"touch {t / 'pwned'}"}}},
    "generator builtins:eval": lambda t: {"family": {"generator": "builtins:eval",
                                                     "generator_kwargs": {"source": f"open('{t / 'pwned'}', 'w')"}}},
    "task shutil:rmtree": lambda t: {"task": "shutil:rmtree", "task_kwargs": {"path": str(t / "victim")}},
    "task subprocess:getoutput": lambda t: {"task": "subprocess:getoutput",
                                            "task_kwargs": {"cmd": f"touch {t / 'pwned'}"}},
    "task this:s": lambda t: {"task": "this:s", "task_kwargs": {}},
}


@pytest.mark.parametrize("command", [["run"], ["compare", "--no-progress"], ["tune", "heuristic", "--no-progress"],
                                     ["bench", "--no-progress"]])
@pytest.mark.parametrize("code", list(SPEC_CODE))
def test_a_task_spec_given_as_task_names_code_only_under_the_opt_in(command, code, capsys, tmp_path):
    victim = _victim(tmp_path)
    spec = _family_spec(tmp_path, **SPEC_CODE[code](tmp_path))
    where = {"bench": ["--tasks", str(spec), "--out", str(tmp_path / "bench")],
             "compare": ["--task", str(spec), "--out", str(tmp_path / "family")],
             "tune": ["--task", str(spec), "--study", str(tmp_path / "study")]}.get(command[0], ["--task", str(spec)])
    err = one_line(capsys, [*command, *where], tmp_path)
    named = code.split()[1]
    assert f"the task spec {spec}" in err and f"'{named}'" in err and "--allow-task-import" in err
    assert not (tmp_path / "pwned").exists() and (victim / "keep.txt").is_file()


@pytest.mark.parametrize("generator, message", [
    ("os:system", "family generator 'os:system' is <built-in function system>, not a function"),
    ("builtins:eval", "family generator 'builtins:eval' is <built-in function eval>, not a function"),
    ("builtins:dict", "is <class 'dict'>, not a function"),
    ("json:loads", "family generator 'json:loads' failed: JSONDecodeError: Expecting value"),
])
def test_family_generators_under_the_opt_in_are_functions_and_fail_in_one_line(generator, message, capsys,
                                                                                tmp_path):
    kwargs = {"s": "x"} if generator == "json:loads" else {"command": f"touch {tmp_path / 'pwned'}"}
    if generator == "builtins:eval":
        kwargs = {"source": f"open('{tmp_path / 'pwned'}', 'w')"}
    spec = _family_spec(tmp_path, family={"generator": generator, "generator_kwargs": kwargs})
    err = one_line(capsys, ["compare", "--task", str(spec), "--allow-task-import", "--no-progress",
                            "--out", str(tmp_path / "family")], tmp_path)
    assert message in err
    assert not (tmp_path / "pwned").exists()


def test_a_resumed_policy_runs_args_yml_cannot_grant_itself_trust(capsys, tmp_path):
    folder = tmp_path / "policy-run"
    folder.mkdir()
    (folder / "args.yml").write_text(yaml.safe_dump({
        "env_id": "dus_gym/Synthetic-v0", "allow_task_import": True,
        "env_kwargs": {"task": EVIL, "task_kwargs": _marker_kwargs(tmp_path)}}))
    (folder / "config.yml").write_text(yaml.safe_dump({"dus_gym/Synthetic-v0": {}}))
    err = one_line(capsys, ["train-policy", "--resume", str(folder)], tmp_path)
    assert f"names the task '{EVIL}'" in err and "--allow-task-import" in err
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("planted", ["gymnasium", "torch", "yaml", "numpy"])
def test_python_m_dus_gym_does_not_import_from_the_working_folder(planted, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / f"{planted}.py").write_text(f"open({str(tmp_path / 'pwned')!r}, 'w')\nraise SystemExit('planted')\n")
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "dus_gym", "--help"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "usage: dus-gym" in proc.stdout, proc.stderr
    assert not (tmp_path / "pwned").exists()


def test_python_m_dus_gym_workers_still_find_the_package(tmp_path):
    # the guard takes the working folder off sys.path; spawned workers start from that sys.path and must still
    # import the package when it is run from its own checkout (an editable install)
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    argv = [sys.executable, "-m", "dus_gym", "compare", "--task", "synthetic-family", "--n-instances", "1",
            "--seeds", "0", "--no-oracle", "--no-ogm-ge", "--no-reversed", "--sources", "train", "--alphas", "3",
            "--tune-instances", "1", "--tune-seeds", "0", "--workers", "2", "--out", str(tmp_path / "fam"),
            "--no-progress", "--set", "n_iterations=10", "--set", "eval_every=10",
            "--set", "task_kwargs.n_samples=300", "--set", "task_kwargs.hidden_dim=8"]
    proc = subprocess.run(argv, cwd=root, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "fam" / "family.json").is_file()


# --- a policy's pickled files are checked against their digests before they are unpickled ------------

class Touch:
    """Unpickling this creates the file ``path``: a stand-in for any code a pickle can run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("damage, message", [
    ("policy.zip replaced", "policy.zip does not match its SHA-256 digest"),
    ("vecnormalize.pkl replaced", "vecnormalize.pkl does not match its SHA-256 digest"),
    ("vecnormalize.pkl without digest", "vecnormalize.pkl has no digest in"),
    ("vecnormalize.pkl missing", "vecnormalize.pkl is missing (policy.json lists its digest)"),
    ("no digests", "lacks a valid 'digests'"),
    ("digest not a string", "vecnormalize.pkl does not match its SHA-256 digest"),
])
def test_policy_pickles_are_checked_against_their_digests_before_unpickling(damage, message, tiny_policy, capsys,
                                                                            tmp_path):
    import shutil

    from dus_gym.core.files import sha256_of

    _, trained = tiny_policy
    folder = tmp_path / "policy"
    shutil.copytree(trained, folder)
    policy = json.loads((folder / "policy.json").read_text())
    assert policy["digests"] == {name: sha256_of(folder / name) for name in ("vecnormalize.pkl", "policy.zip")}
    payload = pickle.dumps(Touch(tmp_path / "pwned"))
    if damage == "policy.zip replaced":
        (folder / "policy.zip").write_bytes(payload)
    elif damage == "vecnormalize.pkl replaced":
        (folder / "vecnormalize.pkl").write_bytes(payload)
    elif damage == "vecnormalize.pkl without digest":
        del policy["digests"]["vecnormalize.pkl"]
        (folder / "vecnormalize.pkl").write_bytes(payload)
    elif damage == "vecnormalize.pkl missing":
        (folder / "vecnormalize.pkl").unlink()
    elif damage == "no digests":
        del policy["digests"]
    else:
        policy["digests"]["vecnormalize.pkl"] = 42
    (folder / "policy.json").write_text(json.dumps(policy))
    err = one_line(capsys, ["run", "--task", "synthetic", "--sampler", "ppo", "--policy", str(folder), *TINY,
                            "--set", "env.iterations_per_step=10"], tmp_path)
    assert message in err
    assert not (tmp_path / "pwned").exists()


# --- prepare reads only inside the release, and train and test stay apart --------------------------

def _twitter_release(tmp_path, test_rows=None, train_rows=None):
    """A TomBERT-layout Twitter2015 release of plain rows (ImageID, tweet); images only for plain names."""
    from PIL import Image

    src = tmp_path / "raw"
    (src / "twitter2015_images").mkdir(parents=True)
    header = "index\t#1 Label\t#2 ImageID\t#3 String\t#3 String"
    rows = {"train": train_rows or [("a.jpg", "the $T$ is great"), ("b.jpg", "the $T$ is sad")],
            "dev": [("c.jpg", "the $T$ is fine")], "test": test_rows or [("d.jpg", "the $T$ is okay")]}
    for split, split_rows in rows.items():
        lines = [header] + [f"{i}\t{i % 3}\t{image}\t{text}\tthing" for i, (image, text) in enumerate(split_rows)]
        (src / f"{split}.tsv").write_text("\n".join(lines) + "\n")
        for image, _ in split_rows:
            if "/" not in image:
                Image.new("RGB", (8, 8)).save(src / "twitter2015_images" / image)
    return src


@pytest.mark.parametrize("image", ["../../outside.jpg", "/tmp/outside.jpg", "sub/../../outside.jpg", ".hidden.jpg",
                                   "..\\outside.jpg"])
def test_prepare_refuses_image_names_that_are_paths(image, capsys, tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "outside.jpg")  # what a path would reach
    src, dst = _twitter_release(tmp_path, test_rows=[(image, "the $T$ is okay")]), tmp_path / "out"
    err = one_line(capsys, ["prepare", "twitter2015", str(src), str(dst), "--no-progress", "--workers", "1"],
                   tmp_path)
    assert "image name" in err and "is not a plain file name" in err
    assert not dst.exists()


@pytest.mark.parametrize("dataset", ["twitter2015", "sarcasm"])
def test_prepare_refuses_an_image_text_sample_in_both_train_and_test(dataset, capsys, tmp_path):
    from PIL import Image

    if dataset == "twitter2015":
        src = _twitter_release(tmp_path, test_rows=[("b.jpg", "the $T$ is sad")])
    else:
        src = tmp_path / "raw"
        (src / "text").mkdir(parents=True)
        (src / "dataset_image").mkdir()
        for split, rows in (("train", [["1", "so nice", 0], ["2", "yeah right", 1]]),
                            ("valid2", [["3", "calm day", 0, 0]]), ("test2", [["2", "yeah right", 1, 1]])):
            (src / "text" / f"{split}.txt").write_text("\n".join(repr(r) for r in rows) + "\n")
            for row in rows:
                Image.new("RGB", (8, 8)).save(src / "dataset_image" / f"{row[0]}.jpg")
    err = one_line(capsys, ["prepare", dataset, str(src), str(tmp_path / "out"), "--no-progress"], tmp_path)
    assert "1 sample (image and text)(s) are in both the train and the test list" in err
    assert not (tmp_path / "out").exists()


def _nvgesture_lists(tmp_path, train, test):
    src = tmp_path / "raw"
    src.mkdir()
    line = "path:./Video_data/{} depth:sk_depth:4:12 color:{}:4:12 duo_left:duo_left:4:12 label:1"
    for name, paths in (("train", train), ("test", test)):
        rows = [line.format(*p) if isinstance(p, tuple) else line.format(p, "sk_color") for p in paths]
        (src / f"nvgesture_{name}_correct_cvpr2016_v2.lst").write_text("\n".join(rows) + "\n")
    return src


@pytest.mark.parametrize("train, test, message", [
    ([("class_01/subject1_r0", "../../../../outside_vid")], ["class_01/subject2_r0"],
     "color video name '../../../../outside_vid' is not a plain file name"),
    ([("class_01/subject1_r0", "/tmp/outside_vid")], ["class_01/subject2_r0"], "is not a plain file name"),
    ([("class_01/subject1_r0", ".hidden")], ["class_01/subject2_r0"], "is not a plain file name"),
    (["class_01/subject1_r0", "class_01/subject2_r0"], ["class_01/subject2_r0"],
     "1 clip(s) are in both the train and the test list (class_01_subject2_r0)"),
    (["class_01/subject1_r0", "class_01/subject1_r0"], ["class_01/subject2_r0"],
     "1 clip(s) are listed twice in the train list (class_01_subject1_r0)"),
    (["class_01/subject2_r0"], ["class_01_subject2/r0"],
     "'Video_data/class_01/subject2_r0' and 'Video_data/class_01_subject2/r0', which both become the prepared clip "
     "'class_01_subject2_r0'"),
    (["class_01/subject1_r0"], ["../../outside/r0"], "must be relative to the release folder"),
])
def test_prepare_nvgesture_refuses_paths_overlaps_and_name_collisions(train, test, message, capsys, tmp_path):
    src = _nvgesture_lists(tmp_path, train, test)
    err = one_line(capsys, ["prepare", "nvgesture", str(src), str(tmp_path / "out"), "--no-progress"], tmp_path)
    assert message in err
    assert not (tmp_path / "out").exists()


def _png_header_only(path, width, height):
    """A PNG that declares ``width`` x ``height`` pixels in a few bytes (a decompression bomb's header)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))


def test_prepare_refuses_a_decompression_bomb_in_one_line(capsys, tmp_path):
    pytest.importorskip("transformers")
    from tests.imagetext_fixture import make_vocab

    src = _twitter_release(tmp_path)
    _png_header_only(src / "twitter2015_images" / "b.jpg", 30_000, 30_000)
    vocab = make_vocab(tmp_path / "vocab", ["the thing is great", "the thing is sad okay fine"])
    err = one_line(capsys, ["prepare", "twitter2015", str(src), str(tmp_path / "out"), "--no-progress", "--workers",
                            "1", "--tokenizer", str(vocab), "--image-size", "16"], tmp_path)
    assert "1 image(s) could not be read (e.g. ['b']" in err and "decompression-bomb limit" in err
    assert not (tmp_path / "out" / "images" / "b.jpg").exists() and not (tmp_path / "out" / "metadata.json").exists()


def test_a_decompression_bomb_in_a_prepared_folder_is_one_error(tmp_path):
    from dus_gym.tasks.sources import load_image

    _png_header_only(tmp_path / "frame_0001.jpg", 30_000, 30_000)
    with pytest.raises(ValueError, match="frame_0001.jpg is missing or unreadable .*decompression bomb"):
        load_image(tmp_path / "frame_0001.jpg", 16)


@pytest.mark.parametrize("argv, message", [
    (["twitter2015", "--image-size", "0"], "image_size must be a whole number from 16 to 2048, got 0"),
    (["twitter2015", "--image-size", "100000"], "image_size must be a whole number from 16 to 2048, got 100000"),
    (["sarcasm", "--image-size", "-3"], "image_size must be a whole number from 16 to 2048"),
    (["twitter2015", "--max-length", "100000"], "max_length must be a whole number from 2 to 512"),
    (["twitter2015", "--max-length", "1"], "max_length must be a whole number from 2 to 512"),
    (["nvgesture", "--frame-size", "100000"], "frame_size must be a whole number from 8 to 1024"),
    (["nvgesture", "--frames", "0"], "frames must be a whole number from 1 to 1000"),
    (["nvgesture", "--frames", "1000000"], "frames must be a whole number from 1 to 1000"),
    (["cremad", "--workers", "0"], "workers must be a whole number from 1 to 1024"),
    (["kinetics-sounds", "--workers", "100000"], "workers must be a whole number from 1 to 1024"),
])
def test_prepare_sizes_and_counts_are_bounded_before_anything_is_read(argv, message, capsys, tmp_path):
    err = one_line(capsys, ["prepare", argv[0], str(tmp_path / "nowhere"), str(tmp_path / "out"), *argv[1:]],
                   tmp_path)
    assert message in err
    assert not (tmp_path / "out").exists()


def test_prepare_functions_bound_their_sizes_too(tmp_path):
    from dus_gym.tasks.gesture.prepare import prepare_nvgesture
    from dus_gym.tasks.imagetext.prepare import prepare_imagetext

    with pytest.raises(ValueError, match="image_size must be a whole number from 16 to 2048, got 0"):
        prepare_imagetext("twitter2015", tmp_path, tmp_path / "out", image_size=0)
    with pytest.raises(ValueError, match="frames must be a whole number from 1 to 1000, got 1.5"):
        prepare_nvgesture(tmp_path, tmp_path / "out", frames=1.5)


# --- envs: num_envs, actions, reset options and close ---------------------------------------------

ENV_KWARGS = {"n_iterations": 4, "iterations_per_step": 2, "task_kwargs": {"hidden_dim": 4, "n_samples": 300}}


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


@pytest.mark.parametrize("action", [np.array([[0.5 + 1j, 0.0], [0.0, 0.0]]), np.array([["a", "b"], ["c", "d"]]),
                                    np.full((2, 2), np.nan, np.float32)])
def test_vector_env_actions_of_envs_about_to_reset_are_checked_too(action):
    from dus_gym.envs.vector.gymnasium_vector_env import DUSVectorEnv
    from dus_gym.samplers.action import ActionError

    env = DUSVectorEnv(2, **ENV_KWARGS)  # next-step auto-reset: an ended env's next action is not acted on
    env.reset(seed=0)
    zeros = np.zeros((2, 2), np.float32)
    while not env.step(zeros)[2].all():
        pass
    with pytest.raises(ActionError, match="expected an action in Box"):
        env.step(action)


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


# --- PPO hyper-parameters: finite and in range before a model is built ----------------------------

@pytest.mark.parametrize("key, value, message", [
    ("gamma", ".nan", "gamma must be a finite number in [0, 1], got nan"),
    ("gamma", "-1", "gamma must be a finite number in [0, 1], got -1"),
    ("gamma", "1.5", "gamma must be a finite number in [0, 1]"),
    ("gae_lambda", ".inf", "gae_lambda must be a finite number in [0, 1], got inf"),
    ("clip_range", ".inf", "clip_range must be a finite number in (0, 10], got inf"),
    ("clip_range", "0", "clip_range must be a finite number in (0, 10], got 0"),
    ("clip_range", "lin_-0.2", "clip_range must be a finite number in (0, 10], got the schedule start -0.2"),
    ("clip_range_vf", "-1", "clip_range_vf must be a finite number in (0, inf]"),
    ("ent_coef", ".nan", "ent_coef must be a finite number in [0, 1000], got nan"),
    ("ent_coef", "-0.1", "ent_coef must be a finite number in [0, 1000]"),
    ("vf_coef", ".inf", "vf_coef must be a finite number in [0, 1000]"),
    ("max_grad_norm", "0", "max_grad_norm must be a finite number in (0, inf]"),
    ("target_kl", ".nan", "target_kl must be a finite number in (0, inf]"),
    ("learning_rate", "lin_inf", "learning_rate must be a finite number in (0, 1], got the schedule start inf"),
    ("learning_rate", "lin_nan", "learning_rate must be a finite number in (0, 1], got the schedule start nan"),
    ("learning_rate", "0", "learning_rate must be a finite number in (0, 1], got 0"),
    ("learning_rate", ".inf", "learning_rate must be a finite number in (0, 1], got inf"),
    ("n_steps", "-5", "n_steps must be a whole number in [1, 1e+06], got -5"),
    ("n_steps", "0", "n_steps must be a whole number in [1, 1e+06], got 0"),
    ("n_steps", "32.5", "n_steps must be a whole number in [1, 1e+06], got 32.5"),
    ("n_steps", "10000000000", "n_steps must be a whole number in [1, 1e+06]"),
    ("batch_size", "1", "batch_size must be a whole number in [2, 1e+07], got 1"),
    ("batch_size", "true", "batch_size must be a whole number in [2, 1e+07], got True"),
    ("n_epochs", "0", "n_epochs must be a whole number in [1, 10000], got 0"),
    ("n_envs", "1000000", "n_envs must be a whole number from 1 to 1_024, got 1000000"),
    ("n_envs", "1.5", "n_envs must be a whole number from 1 to 1_024, got 1.5"),
    ("n_timesteps", ".inf", "n_timesteps must be a whole number from 1 to 1_000_000_000, got inf"),
    ("n_timesteps", ".nan", "n_timesteps must be a whole number from 1 to 1_000_000_000, got nan"),
])
def test_ppo_hyperparameters_are_finite_and_in_range_before_training(key, value, message, capsys, tmp_path):
    entry = yaml.safe_load(f"{key}: {value}")
    (tmp_path / "ppo.yml").write_text(yaml.safe_dump({"default": {"n_steps": 32, "batch_size": 16, **entry}}))
    err = one_line(capsys, ["train-policy", "-conf", str(tmp_path / "ppo.yml"), "--no-evaluate"], tmp_path)
    assert message in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# --- comparisons: counts of instances, the blind policy, repeated names ---------------------------

@pytest.mark.parametrize("n, message", [
    ("-1", "n_instances must be a whole number >= 1 (the first N instances of the pool), got -1"),
    ("0", "n_instances must be a whole number >= 1 (the first N instances of the pool), got 0"),
])
def test_compare_n_instances_is_at_least_one(n, message, capsys, tmp_path):
    err = one_line(capsys, ["compare", "--task", "synthetic-family", "--n-instances", n, "--no-progress",
                            "--out", str(tmp_path / "family")], tmp_path)
    assert message in err
    assert not (tmp_path / "family").exists()


def test_compare_blind_policy_must_have_been_trained_blind(tiny_family_policy, capsys, tmp_path):
    _, folder = tiny_family_policy  # trained with blind=false
    err = one_line(capsys, ["compare", "--task", "synthetic-family", "--policy", str(folder), "--blind-policy",
                            str(folder), "--no-progress", "--out", str(tmp_path / "family")], tmp_path)
    assert f"the blind policy {folder} was not trained blind (its policy.json has env.blind false)" in err
    assert not (tmp_path / "family").exists()


@pytest.mark.parametrize("argv, message", [
    (["bench", "--tasks", "synthetic", "synthetic"], "tasks must be distinct, ['synthetic'] given more than once"),
    (["bench", "--methods", "joint", "mla", "joint"], "methods must be distinct, ['joint'] given more than once"),
    (["bench", "--samplers", "uniform", "uniform"], "samplers must be distinct, ['uniform'] given more than once"),
    (["bench", "--tasks", "mfeat", "synthetic", "mfeat", "synthetic"], "['mfeat', 'synthetic'] given more than once"),
    (["compare", "--samplers", "uniform", "heuristic", "uniform"], "samplers must be distinct, ['uniform']"),
])
def test_repeated_tasks_methods_and_samplers_are_refused_before_any_run(argv, message, capsys, tmp_path):
    extra = {"bench": ["--no-progress", "--out", str(tmp_path / "bench")], "compare": ["--no-progress"]}
    err = one_line(capsys, [*argv, *extra[argv[0]]], tmp_path)
    assert message in err
    assert not (tmp_path / "bench").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv, message", [
    (["train-policy", "-n", "100000000000", "--no-evaluate"], "n_timesteps must be >= 1 and <= 1_000_000_000"),
    (["bench", "--workers", "100000", "--tasks", "synthetic"], "workers must be from 1 to 1024, got 100000"),
    (["bench", "--workers", "0", "--tasks", "synthetic"], "workers must be from 1 to 1024, got 0"),
    (["compare", "--task", "synthetic-family", "--workers", "0"], "workers must be from 1 to 1024, got 0"),
    (["compare", "--task", "synthetic-family", "--workers", "-1"], "workers must be from 1 to 1024, got -1"),
    (["tune", "ppo", "--trial-timesteps", "10000000000"], "trial_timesteps (up to 1_000_000_000)"),
    (["tune", "ppo", "--eval-episodes", "1000000"], "eval episodes (up to 10_000)"),
    (["tune", "ppo", "--trials", "0"], "trials (up to 100_000)"),
    (["tune", "heuristic", "--trials", "10000000"], "trials must be from 1 to 100_000"),
])
def test_run_lengths_and_worker_counts_are_bounded(argv, message, capsys, tmp_path):
    extra = {"bench": ["--out", str(tmp_path / "bench")], "compare": ["--out", str(tmp_path / "family")],
             "tune": ["--study", str(tmp_path / "study")]}.get(argv[0], [])
    err = one_line(capsys, [*argv, *extra, "--no-progress"], tmp_path)
    assert message in err
    assert not any(tmp_path.iterdir()) or not any(p.is_file() for p in tmp_path.rglob("*"))


def _prepared_gesture(tmp_path, train: str, test: str):
    root = tmp_path / "nvgesture"
    for modality in ("rgb", "depth", "flow"):
        (root / modality / "c0").mkdir(parents=True)
    (root / "metadata.json").write_text(json.dumps({
        "format": "dus-gym-gesture", "dataset": "nvgesture", "classes": [f"class_{k:02d}" for k in range(1, 26)],
        "frames": {"per_clip": 80}, "flow": {"bound": 20.0}}))
    (root / "train.csv").write_text(f"clip,label\n{train}\n")
    (root / "test.csv").write_text(f"clip,label\n{test}\n")
    return root


@pytest.mark.parametrize("train, test, message", [
    ("../../outside,1", "c0,1", "clip name '../../outside' is not a plain file name"),
    ("c0,1", "/tmp/outside,1", "clip name '/tmp/outside' is not a plain file name"),
    ("c0,1", "c0,1", "1 clip(s) are in both the train and the test list (c0)"),
])
def test_a_prepared_gesture_folder_lists_plain_disjoint_clips(train, test, message, tmp_path):
    root = _prepared_gesture(tmp_path, train, test)
    with pytest.raises(ValueError, match=re.escape(message)):
        make_task("nvgesture", root=str(root), pretrained=False)


@pytest.mark.parametrize("image", ["../../outside", "/tmp/outside", ".hidden"])
def test_a_prepared_image_text_folder_lists_plain_image_names(image, tmp_path):
    root = tmp_path / "twitter"
    (root / "images").mkdir(parents=True)
    (root / "metadata.json").write_text(json.dumps({
        "format": "dus-gym-imagetext", "dataset": "twitter2015", "classes": ["negative", "neutral", "positive"],
        "text": {"max_length": 30, "vocab_size": 120}, "image": {"size": 32}}))
    for split in ("train", "val", "test"):
        (root / f"{split}.csv").write_text(f"sample,image,label\n{split}-000000,{image},0\n")
    with pytest.raises(ValueError, match="image name .* is not a plain file name"):
        make_task("twitter2015", root=str(root), pretrained=False, text_config={"hidden_size": 8})


@pytest.mark.parametrize("where", ["ppo yaml", "tune ppo yaml", "config", "env spec"])
def test_a_files_family_generator_is_checked_even_when_the_task_is_given_elsewhere(where, capsys, tmp_path):
    victim = _victim(tmp_path)
    family = {"generator": "shutil:rmtree", "generator_kwargs": {"path": str(victim)}}
    if where == "env spec":
        from dus_gym.envs.env import make_spec_env

        spec = _family_spec(tmp_path, family=family)
        with pytest.raises(ConfigError, match="names the family generator 'shutil:rmtree'"):
            make_spec_env(spec, task="synthetic")
    else:
        if where == "config":
            (tmp_path / "c.yaml").write_text(yaml.safe_dump({"family": family, "n_iterations": 2}))
            argv = ["run", "--task", "synthetic", "--config", str(tmp_path / "c.yaml")]
        else:
            (tmp_path / "ppo.yml").write_text(yaml.safe_dump({"default": {"env_kwargs": {"family": family}}}))
            argv = (["train-policy", "--no-evaluate"] if where == "ppo yaml" else
                    ["tune", "ppo", "--study", str(tmp_path / "study"), "--no-progress"])
            argv += ["-conf", str(tmp_path / "ppo.yml"), "--env-kwargs", "task=synthetic"]
        err = one_line(capsys, argv, tmp_path)
        assert "names the family generator 'shutil:rmtree'" in err and "--allow-task-import" in err
    assert (victim / "keep.txt").is_file()
