"""``dus-gym train-policy`` and ``train_policy.py``: flags reach the config, resume after a kill with the run's
own settings, Ctrl-C, and bad input (hyper-parameters, devices, env ids) as one line."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from dus_gym.cli import main
from tests.helpers import EVIL, marker_kwargs, one_line


def test_command_line_flags_reach_the_config(monkeypatch):
    from dus_gym import cli
    from dus_gym.cli import train_policy as command

    seen = {}
    monkeypatch.setattr(command, "train_policy", lambda config, argv=None: seen.setdefault("config", config))
    assert cli.main(["train-policy", "--vec-env", "ray", "--ray-address", "auto", "--ray-gpus-per-env", "0.5",
                     "--devices", "cuda:0", "cuda:1"]) == 0
    config = seen["config"]
    assert config.vec_env == "ray" and config.devices == ("cuda:0", "cuda:1")
    assert config.ray == {"address": "auto", "num_cpus_per_env": 1.0, "num_gpus_per_env": 0.5}


def test_unknown_env_id_is_one_line(tmp_path, capsys):
    assert main(["train-policy", "--env", "dus_gym/Synthetc-v0", "--run-dir", str(tmp_path), "--no-evaluate"]) == 2
    err = capsys.readouterr().err.strip()
    assert "did you mean 'dus_gym/Synthetic-v0'" in err and len(err.splitlines()) == 1
    assert not list(tmp_path.iterdir())  # nothing written for a run that cannot start


def test_unknown_ppo_hyperparameter_suggests_the_nearest(capsys, tmp_path):
    hp = tmp_path / "ppo.yml"
    hp.write_text(yaml.safe_dump({"default": {"n_step": 32}}))
    err = one_line(capsys, ["train-policy", "-conf", str(hp), "--no-evaluate"], tmp_path)
    assert "unknown key 'n_step'" in err and "did you mean 'n_steps'" in err


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


def test_devices_are_used_by_the_dummy_vec_env_too(capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA (the device must be refused)")
    err = one_line(capsys, ["train-policy", "--vec-env", "dummy", "--devices", "cuda:7", "--no-evaluate"], tmp_path)
    assert "device 'cuda:7' asked for but CUDA is not available" in err


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


def test_a_resumed_policy_runs_args_yml_cannot_grant_itself_trust(capsys, tmp_path):
    folder = tmp_path / "policy-run"
    folder.mkdir()
    (folder / "args.yml").write_text(yaml.safe_dump({
        "env_id": "dus_gym/Synthetic-v0", "allow_task_import": True,
        "env_kwargs": {"task": EVIL, "task_kwargs": marker_kwargs(tmp_path)}}))
    (folder / "config.yml").write_text(yaml.safe_dump({"dus_gym/Synthetic-v0": {}}))
    err = one_line(capsys, ["train-policy", "--resume", str(folder)], tmp_path)
    assert f"names the task '{EVIL}'" in err and "--allow-task-import" in err
    assert not (tmp_path / "pwned").exists()


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
    script = Path(__file__).resolve().parents[2] / "train_policy.py"
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
