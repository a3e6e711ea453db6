"""RL Zoo compatibility: its train script runs on dus_gym envs with agents/ppo.yml (smoke runs)."""

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


def test_rl_zoo_train_runs_on_the_default_env_with_its_modality_policy(tmp_path):
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
