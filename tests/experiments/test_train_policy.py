"""Training a policy: the folder it saves."""

import json


def test_saved_policy_folder(tiny_policy):
    _, folder = tiny_policy
    for name in ("policy.zip", "vecnormalize.pkl", "policy.json", "config.yml", "args.yml", "command.txt"):
        assert (folder / name).is_file(), name
    assert list((folder / "checkpoints").glob("ppo_*_steps.zip"))
    settings = json.loads((folder / "policy.json").read_text())
    assert settings["env"]["iterations_per_step"] == 10 and settings["modalities"] == ["dominant", "weak"]
    assert settings["timesteps"] >= 64
