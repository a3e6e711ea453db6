"""RL Zoo compatibility: its train script runs on a dus_gym env with agents/ppo.yml (smoke run)."""

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
