import pytest
import yaml
from stable_baselines3.common.utils import LinearSchedule
from torch import nn

from dus_gym.agents.hyperparams import load_hyperparams, parse_literal_call
from dus_gym.core.config import ConfigError
from dus_gym.core.specs import specs_dir


def test_shipped_ppo_yml_resolves_for_every_env():
    for env_id in ("dus_gym/Synthetic-v0", "dus_gym/MFeat-v0"):
        hp = load_hyperparams(specs_dir("agents") / "ppo.yml", env_id)
        assert hp.n_envs == 2 and hp.n_timesteps >= 1000 and hp.policy == "MlpPolicy"
        assert hp.normalize == {"norm_obs": True, "norm_reward": False}
        assert isinstance(hp.model_kwargs["learning_rate"], LinearSchedule)
        assert hp.model_kwargs["learning_rate"](0.5) == pytest.approx(5e-4)
        assert hp.model_kwargs["learning_rate"](0.0) == 0.0  # lin_<start> decays to 0, as in the RL Zoo
        assert hp.model_kwargs["policy_kwargs"]["net_arch"] == {"pi": [64, 64], "vf": [64, 64]}
        assert "n_envs" not in hp.model_kwargs and "normalize" not in hp.model_kwargs


def test_shipped_family_entries_train_their_policies_the_same_way():
    # the mfeat family policy is the synthetic one's recipe on other instances: a difference between
    # them must come from the instances, not from the PPO settings. Only the runner sizes differ: the
    # synthetic family batches 16 learners (faster per env step on a CPU) for 1.5x the env steps, with
    # the same 640 env steps per rollout.
    path = specs_dir("agents") / "ppo.yml"
    synthetic, strength, mfeat = (load_hyperparams(path, f"dus_gym/{name}")
                                  for name in ("SyntheticFamily-v0", "SyntheticFamily-v1", "MFeatFamily-v1"))
    runner = ("n_envs", "n_steps", "n_timesteps")
    assert synthetic.raw == strength.raw and synthetic.policy == "dus_gym.agents.policies.ModalityPolicy"
    assert ({k: v for k, v in synthetic.raw.items() if k not in runner}
            == {k: v for k, v in mfeat.raw.items() if k not in runner})
    assert synthetic.n_envs == 16 and synthetic.n_timesteps == 24_000 and mfeat.n_timesteps == 16_000
    assert synthetic.n_envs * synthetic.raw["n_steps"] == mfeat.n_envs * mfeat.raw["n_steps"] == 640


def test_zoo_strings_are_parsed_without_eval():
    parsed = parse_literal_call("dict(net_arch=[32, 32], activation_fn=nn.Tanh, ortho_init=False)", "x")
    assert parsed == {"net_arch": [32, 32], "activation_fn": nn.Tanh, "ortho_init": False}
    for evil in ("__import__('os').system('true')", "dict(a=open('/etc/passwd'))", "dict(a=os.sep)"):
        with pytest.raises(ConfigError):
            parse_literal_call(evil, "x")


@pytest.mark.parametrize("text", ["__import__('os').system('touch pwned')", "dict(net_arch=open('x').read())",
                                  "dict(activation_fn=os.system)"])
def test_zoo_policy_kwargs_strings_are_parsed_not_evaluated(text, tmp_path):
    from dus_gym.agents.hyperparams import load_hyperparams

    hp = tmp_path / "ppo.yml"
    hp.write_text(yaml.safe_dump({"default": {"policy_kwargs": text}}))
    with pytest.raises(ConfigError):
        load_hyperparams(hp, "dus_gym/Synthetic-v0")


def test_default_entry_and_bad_files(tmp_path):
    path = tmp_path / "ppo.yml"
    path.write_text(yaml.safe_dump({"default": {"n_timesteps": "1e3", "normalize": True, "clip_range": "lin_0.2"}}))
    hp = load_hyperparams(path, "dus_gym/Anything-v0")
    assert hp.n_timesteps == 1000 and hp.normalize == {"norm_obs": True, "norm_reward": True}
    assert hp.model_kwargs["clip_range"](1.0) == pytest.approx(0.2)
    path.write_text(yaml.safe_dump({"dus_gym/X-v0": {"learning_rate": "exp_1e-3"}}))
    with pytest.raises(ConfigError, match="lin_"):
        load_hyperparams(path, "dus_gym/X-v0")
    with pytest.raises(ConfigError, match="no entry"):
        load_hyperparams(path, "dus_gym/Y-v0")


def test_shipped_ppo_yml_is_per_env_id_and_the_fallback_is_dus_gyms():
    import gymnasium as gym

    import dus_gym  # noqa: F401  (registers the ids)
    from dus_gym.agents.hyperparams import FALLBACK_HYPERPARAMS

    path = specs_dir("agents") / "ppo.yml"
    table = yaml.safe_load(path.read_text())
    assert "default" not in table and all(env_id in gym.registry for env_id in table)  # what the RL Zoo reads
    hp = load_hyperparams(path, "dus_gym/Unlisted-v0", fallback=FALLBACK_HYPERPARAMS)
    assert hp.raw == FALLBACK_HYPERPARAMS and hp.n_timesteps == 10_000 and hp.model_kwargs["n_steps"] == 160
    with pytest.raises(ConfigError, match="no entry for 'dus_gym/Unlisted-v0'"):
        load_hyperparams(path, "dus_gym/Unlisted-v0")  # a file without the id and without a fallback


def test_an_entry_names_only_dus_gyms_callback_for_the_zoo():
    from dus_gym.agents.hyperparams import parse_entry

    entry = {"policy": "MlpPolicy", "n_steps": 8, "callback": "dus_gym.agents.callbacks.DUSMetricsCallback"}
    assert "callback" not in parse_entry(entry, "x").model_kwargs  # the Zoo's key: not a PPO argument
    with pytest.raises(ConfigError, match="'os.system' is not a callback of dus-gym's"):
        parse_entry({**entry, "callback": ["os.system"]}, "x")
