"""Resuming a policy-training run from its last checkpoint (the command line is in tests/cli)."""

from dataclasses import replace


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
