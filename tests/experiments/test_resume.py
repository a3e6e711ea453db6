"""Crashes and resume: a killed run resumes exactly, a diverged run keeps its last checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dus_gym.cli import main
from dus_gym.core.checkpoint import load_run_checkpoint
from dus_gym.core.learner import Learner

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
    folder = next(tmp_path.glob("synthetic-uniform-seed0-*"))
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


@pytest.mark.parametrize("change, message", [
    ({"seed": 6}, "differs in \\['seed'\\]"),
    ({"learner": {"lr": 0.01}}, "differs in \\['learner.lr'\\]"),
    ({"task": "mfeat"}, "differs in \\['task'\\]"),
])
def test_checkpoint_of_another_run_config_is_refused(tmp_path, change, message):
    from dus_gym.core.checkpoint import save_run_checkpoint
    from dus_gym.core.config import RunConfig, from_dict, to_dict
    from dus_gym.core.specs import deep_merge

    base = {"task": "synthetic", "n_iterations": 12}
    save_run_checkpoint(tmp_path / "checkpoint.pt", {"iteration": 3}, to_dict(from_dict(RunConfig, base)))
    assert load_run_checkpoint(tmp_path / "checkpoint.pt", to_dict(from_dict(RunConfig, base)))["iteration"] == 3
    other = to_dict(from_dict(RunConfig, deep_merge(base, change)))
    with pytest.raises(ValueError, match=message):
        load_run_checkpoint(tmp_path / "checkpoint.pt", other)


def test_train_policy_checkpoints_atomically_and_resumes_model_and_statistics(tiny_policy, tmp_path, capsys):
    import pickle
    import shutil

    from stable_baselines3 import PPO

    from dus_gym.experiments.train_policy import train_policy

    config, source = tiny_policy
    folder = tmp_path / "run"
    shutil.copytree(source, folder)
    checkpoints = folder / "checkpoints"
    assert not list(checkpoints.glob(".*"))  # no temporary file left behind
    zips = sorted(checkpoints.glob("ppo_*_steps.zip"), key=lambda p: int(p.stem.split("_")[1]))
    last = int(zips[-1].stem.split("_")[1])
    for path in zips:  # every checkpoint loads, with its statistics next to it
        assert PPO.load(path, device="cpu").num_timesteps == int(path.stem.split("_")[1])
        assert (checkpoints / f"ppo_vecnormalize_{path.stem.split('_')[1]}_steps.pkl").is_file()
    (checkpoints / f".ppo_{last + 32}_steps.zip.tmp").write_bytes(b"PK\x03\x04 half-written")  # a killed save
    with open(checkpoints / f"ppo_vecnormalize_{last}_steps.pkl", "rb") as f:
        count_before = pickle.load(f).obs_rms.count
    train_policy(replace(config, resume=str(folder), n_timesteps=last + 32, eval_freq=0), argv=["train_policy.py"])
    assert f"ppo_{last}_steps.zip at {last} steps" in capsys.readouterr().out
    assert PPO.load(folder / "policy.zip", device="cpu").num_timesteps == last + 32
    with open(folder / "vecnormalize.pkl", "rb") as f:
        assert pickle.load(f).obs_rms.count >= count_before + 32  # statistics continued (plus resets)


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


def test_train_policy_sigkill_then_resume(tmp_path):
    """A policy run killed mid-training resumes from its last checkpoint (two SB3 process starts, ~20 s)."""
    from stable_baselines3 import PPO

    from tests.conftest import TINY_PPO

    hp = tmp_path / "ppo.yml"
    hp.write_text(yaml.safe_dump({"dus_gym/Synthetic-v0": {**TINY_PPO, "n_timesteps": 100_000}}))
    root = Path(__file__).resolve().parents[2]
    base = [sys.executable, str(root / "train_policy.py"), "--env", "dus_gym/Synthetic-v0", "-conf", str(hp),
            "--vec-env", "dummy", "--no-evaluate",
            "--no-progress", "--eval-freq", "0", "--checkpoint-freq", "32", "--env-kwargs", "n_iterations=40",
            "iterations_per_step=10", "task_kwargs.hidden_dim=8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*base, "--run-dir", str(tmp_path / "runs")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list((tmp_path / "runs").glob("*/checkpoints/ppo_64_steps.zip")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "timeout"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    folder = next((tmp_path / "runs").iterdir())
    assert not (folder / "policy.zip").exists()
    resumed = subprocess.run([*base, "--resume", str(folder), "-n", "160"], env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout
    assert PPO.load(folder / "policy.zip", device="cpu").num_timesteps == 160
