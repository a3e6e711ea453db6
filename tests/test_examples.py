"""The examples run (tiny budgets)."""

import json
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TINY = {"n_iterations": 20, "iterations_per_step": 10, "task_kwargs": {"n_samples": 300, "hidden_dim": 8}}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def test_cleanrl_ppo_trains_on_the_gymnasium_vector_env(tmp_path):
    script = runpy.run_path(str(EXAMPLES / "cleanrl_ppo.py"))
    record = script["main"](["--total-timesteps", "16", "--num-envs", "2", "--num-steps", "4", "--update-epochs", "2",
                             "--num-minibatches", "2", "--env-kwargs", json.dumps(TINY), "--runs-dir", str(tmp_path)])
    assert len(record["policy_loss"]) == 2  # 16 steps = 2 rollouts of 2 envs x 4 steps
    assert np.isfinite(record["policy_loss"]).all() and np.isfinite(record["value_loss"]).all()
    assert len(record["episode_return"]) == 8  # episodes of 2 steps: 4 per env, all ended at a same-step reset
    # the return of an episode is its final validation accuracy (delta rewards telescope, terminal weight 1),
    # minus the accuracy at reset: within [-1, 2]
    assert all(-1.0 <= r <= 2.0 for r in record["episode_return"])
    assert all(0.0 <= a <= 1.0 for a in record["final_val_acc"])
    # as CleanRL's scripts: TensorBoard scalars in the run folder, and the agent's weights saved there
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(record["run_dir"])
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"charts/episodic_return", "charts/final_val_acc", "losses/policy_loss", "losses/value_loss"} <= set(tags)
    assert [e.value for e in events.Scalars("losses/policy_loss")] == pytest.approx(record["policy_loss"])
    weights = torch.load(record["model_path"], weights_only=True)
    agent = script["Agent"](9, 2)
    agent.load_state_dict(weights)
    assert torch.equal(agent.actor_logstd, weights["actor_logstd"])
