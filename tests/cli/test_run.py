"""``dus-gym run``: end to end, resume after a kill or a divergence, a policy driving the run, and bad input
(names, data, checkpoints, policies, task builders) as one line with exit status 2."""

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from stable_baselines3 import PPO

from dus_gym.cli import main
from dus_gym.core.checkpoint import load_run_checkpoint
from dus_gym.core.learner import Learner
from dus_gym.core.task import MLPEncoder
from dus_gym.samplers.ppo import PolicySampler
from dus_gym.tasks import MultimodalSplit, Task, register_task
from tests.helpers import EVIL, FAST, REWARD_WEIGHTS, marker_kwargs, one_line, only, prepared_root

TINY = ["--iterations", "4", "--no-progress", "--set", "eval_every=4", "--set", "tensorboard=false",
        "--set", "task_kwargs.hidden_dim=8"]


def test_run_with_a_method_records_it(tmp_path, capsys):
    assert main(["run", "--task", "synthetic", "--method", "ogm-ge", "--sampler", "heuristic", "--run-dir",
                 str(tmp_path), *FAST]) == 0
    folder = only(tmp_path, "synthetic-ogm-ge-heuristic-seed0_*")
    assert json.loads((folder / "results.json").read_text())["method"] == "ogm-ge"
    assert yaml.safe_load((folder / "config.yaml").read_text())["learner"]["method"] == "ogm-ge"
    assert "/ ogm-ge / heuristic /" in capsys.readouterr().out
    assert main(["run", "--task", "synthetic", "--method", "pareto", "--run-dir", str(tmp_path), *FAST]) == 2
    assert "unknown method 'pareto' (did you mean 'mmpareto'?)" in capsys.readouterr().err


def test_run_end_to_end_writes_config_results_and_tensorboard(tmp_path, capsys):
    code = main(["run", "--task", "synthetic", "--sampler", "heuristic", "--seed", "3", "--run-dir", str(tmp_path),
                 "--set", "sampler_kwargs.alpha=20", *FAST])
    assert code == 0
    folder = only(tmp_path, "synthetic-heuristic-seed3_*")
    results = json.loads((folder / "results.json").read_text())
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert results["iterations"] == 40 and results["seed"] == 3 and results["sampler"] == "heuristic"
    assert config["sampler_kwargs"]["alpha"] == 20 and config["task_kwargs"]["dominant_dim"] == 1024
    assert sum(results["samples_seen"].values()) > 0 and 0 <= results["test"]["fused"]["acc"] <= 1
    assert [p["iteration"] for p in results["val_curve"]] == [20, 40]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("imbalance/cmd/dominant", "imbalance/cmd/weak", "sampler/count/weak", "learner/loss",
                "val/fused_acc", "val/acc/weak"):
        assert tag in tags
    counts = [e.value for e in events.Scalars("sampler/count/dominant")]
    assert len(counts) == 4 and min(counts) < 64  # the heuristic starved the dominant modality
    assert "fused test acc" in capsys.readouterr().out


def test_epochs_convert_at_base_batch_size(tmp_path):
    code = main(["run", "--task", "mfeat", "--epochs", "2", "--run-dir", str(tmp_path), "--no-progress",
                 "--set", "learner.batch_size=100", "--set", "task_kwargs.pix_encoder=mlp"])
    assert code == 0
    results = json.loads(only(tmp_path, "mfeat-uniform-seed0_*/results.json").read_text())
    assert results["iterations"] == 24  # ceil(2 * 1200 / 100)


def test_config_file_and_python_dash_m(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"task": "synthetic", "n_iterations": 10, "eval_every": 10,
                                      "learner": {"lr": 0.01}, "task_kwargs": {"hidden_dim": 8}}))
    proc = subprocess.run([sys.executable, "-m", "dus_gym", "run", "--config", str(config), "--run-dir",
                           str(tmp_path), "--no-progress"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    written = yaml.safe_load(only(tmp_path, "synthetic-uniform-seed0_*/config.yaml").read_text())
    assert written["learner"]["lr"] == 0.01 and written["n_iterations"] == 10


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


def test_diverged_run_stops_with_one_line_and_writes_no_results(tmp_path, capsys):
    code = main(["run", "--task", "synthetic", "--run-dir", str(tmp_path), "--set", "learner.lr=1e30", *FAST])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "loss became" in err and "lower learner.lr" in err and len(err.splitlines()) == 1
    folder = only(tmp_path, "synthetic-uniform-seed0_*")
    assert (folder / "config.yaml").is_file() and not (folder / "results.json").exists()


RUN = ["run", "--task", "synthetic", "--sampler", "heuristic", "--seed", "5", "--iterations", "1500", "--no-progress",
       "--set", "eval_every=250", "--set", "checkpoint_every=50", "--set", "task_kwargs.hidden_dim=16",
       "--set", "tensorboard=false", "--set", "sampler_kwargs.alpha=20", "--set", "learner.lr_decay_every=400"]


def dus_gym(argv: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # same threads in every process
    return subprocess.Popen([sys.executable, "-m", "dus_gym", *argv], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return out


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "killed").mkdir()
    full = dus_gym([*RUN, "--run-dir", "runs"], tmp_path / "full")
    killed = dus_gym([*RUN, "--run-dir", "runs"], tmp_path / "killed")
    deadline = time.monotonic() + 240
    checkpoint = None
    while checkpoint is None:
        assert killed.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        found = list((tmp_path / "killed").glob("runs/*/checkpoint.pt"))
        checkpoint = found[0] if found else None
        time.sleep(0.01)
    time.sleep(0.3)  # let it run past the first checkpoint, somewhere between two
    os.kill(killed.pid, signal.SIGKILL)
    killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    folder = checkpoint.parent
    assert not (folder / "results.json").exists()
    state = torch.load(checkpoint, weights_only=True)["state"]
    assert 0 < state["iteration"] < 1500

    out = finish(dus_gym(["run", "--resume", str(folder.relative_to(tmp_path / "killed")), "--no-progress"],
                         tmp_path / "killed"))
    assert "resuming" in out
    finish(full)
    reference = next((tmp_path / "full").glob("runs/*/results.json"))
    a, b = json.loads(reference.read_text()), json.loads((folder / "results.json").read_text())
    a.pop("train_seconds"), b.pop("train_seconds")
    assert a == b  # every metric, the val curve, the CMD, samples seen, probes: exactly
    assert np.array_equal(np.load(reference.parent / "counts.npy"), np.load(folder / "counts.npy"))
    assert min(np.load(folder / "counts.npy")[:, 0]) < 64  # the heuristic acted: its state mattered
    assert not checkpoint.exists()  # removed once the run is complete
    print(f"resumed from iteration {state['iteration']}; compared: {sorted(a)}")


def test_resume_without_a_checkpoint_starts_again_and_a_finished_run_is_refused(tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.yaml").write_text("task: synthetic\nn_iterations: 5\neval_every: 5\ntensorboard: false\n"
                                        "task_kwargs: {hidden_dim: 8}\n")
    assert main(["run", "--resume", str(folder), "--no-progress"]) == 0
    assert "starting the run again" in capsys.readouterr().out
    assert main(["run", "--resume", str(folder), "--no-progress"]) == 2
    assert "already finished" in capsys.readouterr().err
    assert main(["run", "--resume", str(folder), "--set", "learner.lr=1"]) == 2
    assert "drop --set" in capsys.readouterr().err


def test_diverged_run_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    step = Learner.step

    def diverge_after_25(self, counts, progress=None):
        stats = step(self, counts, progress)
        return replace(stats, loss=float("nan")) if self.iteration > 25 else stats

    monkeypatch.setattr(Learner, "step", diverge_after_25)
    code = main(["run", "--task", "synthetic", "--iterations", "40", "--run-dir", str(tmp_path), "--no-progress",
                 "--set", "checkpoint_every=10", "--set", "task_kwargs.hidden_dim=8", "--set", "tensorboard=false"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "loss became nan at iteration 26" in err
    assert "last good checkpoint (iteration 20)" in err
    folder = next(tmp_path.glob("synthetic-uniform-seed0_*"))
    assert not (folder / "results.json").exists()
    config = yaml.safe_load((folder / "config.yaml").read_text())
    state = load_run_checkpoint(folder / "checkpoint.pt", config)
    assert state["iteration"] == 20
    assert all(torch.isfinite(v).all() for v in state["learner"]["model"].values())
    assert f"dus-gym run --resume {folder} --lr LR" in err

    # the documented way on: the last good checkpoint, a new learning rate, config.yaml as the run wrote it
    monkeypatch.undo()
    written = (folder / "config.yaml").read_text()
    assert main(["run", "--resume", str(folder), "--lr", "0.01", "--no-progress"]) == 0
    assert (folder / "config.yaml").read_text() == written
    assert yaml.safe_load((folder / "changes.yaml").read_text())["changes"][0]["learner.lr"] == 0.01
    learner = torch.load(folder / "learner.pt", weights_only=True)["state"]
    assert [g["lr"] for g in learner["optimizer"]["param_groups"]] == [0.01]
    assert json.loads((folder / "results.json").read_text())["iterations"] == 40


@pytest.mark.parametrize("flag", ["--method", "--run-dir"])
def test_run_resume_refuses_flags_it_would_ignore(flag, capsys, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.yaml").write_text("task: synthetic\nn_iterations: 5\n")
    value = "joint" if flag == "--method" else str(tmp_path / "other")
    err = one_line(capsys, ["run", "--resume", str(folder), flag, value], tmp_path)
    assert f"drop {flag}" in err


def test_run_checkpoint_of_another_version_is_one_line(capsys, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.yaml").write_text("task: synthetic\nn_iterations: 5\n")
    torch.save({"format": "dus-gym-run", "version": 99, "config": {}, "state": {}}, folder / "checkpoint.pt")
    assert "format version 99" in one_line(capsys, ["run", "--resume", str(folder)], tmp_path)


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


def test_policy_drives_a_run_exactly_as_in_the_env(tiny_policy, tmp_path):
    """The ppo sampler's whole rollout in ``dus-gym run`` equals the policy acting in the env on the same learner."""
    _, folder = tiny_policy
    code = main(["run", "--task", "synthetic", "--sampler", "ppo", "--policy", str(folder), "--iterations", "45",
                 "--run-dir", str(tmp_path), "--no-progress", "--set", "eval_every=45"])
    assert code == 0
    run = next(tmp_path.glob("synthetic-ppo-seed0_*"))
    counts = np.load(run / "counts.npy")
    assert counts.shape == (45, 2)
    # the env with the run's budget and K, its episode restarted on the run's learner seed (0)
    model = PPO.load(folder / "policy.zip", device="cpu")
    sampler = PolicySampler(64, 2, policy=str(folder))
    env = gym.make("dus_gym/Synthetic-v0", n_iterations=45, iterations_per_step=10).unwrapped
    env.reset(seed=0)
    env.episodes.start(0, 0)
    env.episodes.evaluate([0])
    obs, chosen, done = env.episodes.observation(0), [], False
    while not done:
        action, _ = model.predict(sampler.normalize(obs), deterministic=True)
        obs, _, terminated, truncated, info = env.step(np.clip(action, -1, 1))
        chosen.append(info["counts"].tolist())
        done = terminated or truncated
    assert len(chosen) == 5  # four steps of K = 10 and a last one of 5
    for step, start in enumerate(range(0, 45, 10)):  # the run held each decision for K iterations
        assert (counts[start : start + 10] == chosen[step]).all(), (step, counts[start], chosen[step])
    assert len({tuple(c) for c in chosen}) > 1  # the policy changed its counts along the rollout
    results = json.loads((run / "results.json").read_text())
    assert results["sampler"] == "ppo" and results["iterations"] == 45


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


def test_malformed_config_file(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("learner: {lr: [unclosed\n")
    assert "is not valid YAML" in one_line(capsys, ["run", "--config", str(bad)], tmp_path)
    bad.write_text("- just\n- a list\n")
    assert "must hold a mapping" in one_line(capsys, ["run", "--config", str(bad)], tmp_path)


def test_config_yaml_tags_are_not_constructed(capsys, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f'task: synthetic\nlearner: !!python/object/apply:os.system ["touch {marker}"]\n')
    assert "not valid YAML" in one_line(capsys, ["run", "--config", str(evil)], tmp_path)
    assert not marker.exists()


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


@pytest.mark.parametrize("key", REWARD_WEIGHTS)
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_nan_or_inf_reward_weights_are_refused_on_the_command_line(key, value, capsys, tmp_path):
    err = one_line(capsys, ["run", "--task", "synthetic", "--set", f"env.{key}={value}"], tmp_path)
    assert f"config key 'env.{key}'" in err and "finite" in err


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


@pytest.mark.parametrize("metadata", [{}, {"classes": None}, {"classes": ["NEU"]}, {"classes": "NEU,HAP"}])
def test_metadata_without_classes_is_one_line(metadata, capsys, tmp_path):
    root = prepared_root(tmp_path, "clip,label\nc0,NEU\n", np.zeros((4, 4), np.float32))
    (root / "metadata.json").write_text(json.dumps({"format": "dus-gym-audiovisual", "dataset": "cremad",
                                                    **metadata}))
    err = one_line(capsys, ["run", "--task", "cremad", "--set", f"task_kwargs.root={root}"], tmp_path)
    assert "lacks 'classes'" in err


def test_nan_in_a_shipped_format_data_file(capsys, tmp_path):
    from dus_gym.tasks.mfeat import load_mfeat_arrays

    views, labels = load_mfeat_arrays()
    views["fou"][3, 2] = np.nan
    np.savez(tmp_path / "nan.npz", labels=labels, **views)
    err = one_line(capsys, ["run", "--task", "mfeat", "--set", f"task_kwargs.data_path={tmp_path / 'nan.npz'}"],
                   tmp_path)
    assert "modality 'fou' has NaN/inf" in err


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


@pytest.mark.parametrize("argv", [
    lambda t: ["run", "--task", EVIL, "--set", f"task_kwargs.command=touch {t / 'pwned'}"],
    lambda t: ["run", "--config", str(t / "c.yaml"), "--allow-task-import"],
    lambda t: ["run", "--task", "builtins:eval", "--set", f"task_kwargs.source=open('{t / 'pwned'}', 'w')"],
])
def test_builtins_are_never_called_as_task_builders(argv, capsys, tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"task": EVIL, "task_kwargs": marker_kwargs(tmp_path)}))
    err = one_line(capsys, argv(tmp_path), tmp_path)
    assert "not a function that returns a dus_gym.tasks.Task" in err
    assert not (tmp_path / "pwned").exists()


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


def _policy_folder(tmp_path, **changes):
    folder = tmp_path / "policy"
    folder.mkdir(exist_ok=True)
    from dus_gym.core.files import sha256_of

    (folder / "policy.zip").write_bytes(b"PK\x03\x04 not a model")
    settings = {"format": "dus-gym-policy", "version": 3, "modalities": ["dominant", "weak"], "batch_size": 64,
                "env": {"n_min": 8, "n_max": 256, "action_type": "box", "count_levels": [8, 256],
                        "iterations_per_step": 10}, "digests": {"policy.zip": sha256_of(folder / "policy.zip")},
                **changes}
    (folder / "policy.json").write_text(json.dumps(settings))
    return folder


@pytest.mark.parametrize("changes, message", [
    ({"version": 2}, "format version 2, this dus-gym reads version 3; retrain it"),
    ({"modalities": ["a", "b", "c"]}, "trained for 3 modalities"),
    ({"batch_size": 32}, "trained with B = 32"),
    ({}, "not a loadable SB3 PPO model"),
])
def test_policy_of_another_version_or_task_or_corrupt(changes, message, capsys, tmp_path):
    folder = _policy_folder(tmp_path, **changes)
    err = one_line(capsys, ["run", "--task", "synthetic", "--sampler", "ppo", "--policy", str(folder), *TINY], tmp_path)
    assert message in err


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
