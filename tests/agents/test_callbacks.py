"""Start the real TensorBoard server on loopback and read the custom tags back over its HTTP API."""

import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def test_tensorboard_server_serves_the_custom_tags(tiny_policy):
    _, folder = tiny_policy
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(folder / "tb"), "--host", "127.0.0.1",
         "--port", str(port), "--load_fast", "false"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        tags, deadline = {}, time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                tags = get_json(f"{base}/data/plugin/scalars/tags")
                if any("episode/val_acc" in t for t in tags.values()):
                    break
            except OSError:
                pass
            time.sleep(1)
        else:
            pytest.fail(f"TensorBoard did not serve the custom tags in time; got {tags}")
        run, run_tags = next((r, t) for r, t in tags.items() if "episode/val_acc" in t)
        for tag in ("rollout/ep_rew_mean", "train/value_loss", "episode/gap", "episode/val_acc_weak",
                    "episode/mean_count_dominant", "reward/delta", "reward/cmd", "reward/terminal"):
            assert tag in run_tags, tag
        query = urllib.parse.urlencode({"run": run, "tag": "episode/val_acc"})
        points = get_json(f"{base}/data/plugin/scalars/scalars?{query}")
        values = [p[2] for p in points]
        assert values and all(0.0 <= v <= 1.0 for v in values) and max(values) > 0.2
        query = urllib.parse.urlencode({"run": run, "tag": "episode/mean_count_dominant"})
        counts = [p[2] for p in get_json(f"{base}/data/plugin/scalars/scalars?{query}")]
        assert all(8 <= c <= 256 for c in counts)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_hyperparameters_reach_tensorboards_hparams_tab(tiny_policy):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    config, folder = tiny_policy
    hparams = {}
    for events in (folder / "tb").rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for content in accumulator.PluginTagToContent("hparams").values():
            data = HParamsPluginData.FromString(content)
            if data.HasField("session_start_info"):
                hparams.update(data.session_start_info.hparams)
    assert hparams["env_id"].string_value == "dus_gym/Synthetic-v0"
    assert hparams["ppo/n_steps"].number_value > 0 and hparams["seed"].number_value == config.seed
    assert hparams["env/n_iterations"].number_value == config.env_kwargs["n_iterations"]
