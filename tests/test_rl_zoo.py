"""RL Zoo compatibility: its train, enjoy and record_video scripts run on dus_gym envs with agents/ppo.yml (smoke
runs; the default env gets all three, as docs/policies.md gives them)."""

import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from dus_gym.core.specs import specs_dir

pytest.importorskip("rl_zoo3")


def test_rl_zoo_train_runs_on_mfeat(tmp_path):
    cmd = [sys.executable, "-m", "rl_zoo3.train", "--algo", "ppo", "--env", "dus_gym/MFeat-v0",
           "--gym-packages", "dus_gym", "-conf", str(specs_dir("agents") / "ppo.yml"), "-n", "32",
           "--env-kwargs", "n_iterations:20", "iterations_per_step:10",
           "--hyperparams", "n_envs:1", "n_steps:16", "batch_size:16",
           "--log-folder", str(tmp_path), "--eval-freq", "-1", "--seed", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved = list(Path(tmp_path).glob("ppo/dus_gym-MFeat-v0_*/dus_gym-MFeat-v0.zip"))
    assert saved, proc.stdout[-2000:]


def test_rl_zoo_train_enjoy_and_record_video_run_on_the_default_env(tmp_path, monkeypatch, capsys):
    # agents/ppo.yml names ModalityPolicy by its dotted path, which the Zoo imports itself
    cmd = [sys.executable, "-m", "rl_zoo3.train", "--algo", "ppo", "--env", "dus_gym/SyntheticFamily-v1",
           "--gym-packages", "dus_gym", "-conf", str(specs_dir("agents") / "ppo.yml"), "-n", "16",
           "--env-kwargs", "n_iterations:40", "iterations_per_step:20", "task_kwargs:dict(n_samples=300)",
           "--hyperparams", "n_envs:1", "n_steps:8", "batch_size:8", "n_epochs:1",
           "--log-folder", str(tmp_path), "--tensorboard-log", str(tmp_path / "tb"), "--eval-freq", "-1",
           "--seed", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved = list(Path(tmp_path).glob("ppo/dus_gym-SyntheticFamily-v1_*/dus_gym-SyntheticFamily-v1.zip"))
    assert saved, proc.stdout[-2000:]
    from stable_baselines3 import PPO

    from dus_gym.agents.policies import ModalityPolicy

    assert isinstance(PPO.load(saved[0], device="cpu").policy, ModalityPolicy)
    # the entry's callback (DUSMetricsCallback) puts the DUS tags into the Zoo's TensorBoard logs
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for events in (tmp_path / "tb").rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        tags.update(accumulator.Tags()["scalars"])
    assert {"episode/val_acc", "reward/delta", "rollout/ep_rew_mean"} <= tags
    # enjoy and record_video on the model just trained (its folder's args.yml holds the env kwargs)
    from rl_zoo3.enjoy import enjoy

    env = "dus_gym/SyntheticFamily-v1"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["enjoy", "--algo", "ppo", "--env", env, "--gym-packages", "dus_gym", "-f", ".",
                                      "-n", "4", "--seed", "0"])
    enjoy()  # with rendering: the env's "human" mode prints a line per step
    assert "step   2 | iteration    40/40 | counts" in capsys.readouterr().out
    pytest.importorskip("moviepy")
    monkeypatch.setattr(sys, "argv", ["record_video", "--algo", "ppo", "--env", env, "-f", ".", "-n", "4",
                                      "-o", "videos", "--seed", "0"])
    runpy.run_module("rl_zoo3.record_video", run_name="__main__")  # dus_gym is imported: its ids are registered
    videos = list((tmp_path / "videos").glob("*.mp4"))
    assert videos and videos[0].stat().st_size > 1000
