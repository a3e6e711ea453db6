"""The run loop's hooks: a user's callback sees every iteration and can stop the run."""

import json

import numpy as np

from dus_gym.core.config import RunConfig, from_dict
from dus_gym.core.metrics import balance_degree
from dus_gym.experiments.family import case_config, family_config
from dus_gym.experiments.run import RunCallback, run_training
from dus_gym.tasks.families import TaskFamily


class StopAt(RunCallback):
    def __init__(self, stop: int) -> None:
        super().__init__()
        self.stop, self.seen, self.validated, self.ended = stop, [], [], False

    def _on_iteration(self) -> bool:
        self.seen.append(self.run.iteration)
        if self.run.validation is not None:
            self.validated.append(self.run.iteration)
        assert self.run.stats.counts[0].tolist() == list(self.run.history[self.run.iteration - 1])
        return self.run.iteration < self.stop

    def _on_run_end(self) -> None:
        self.ended = True


def test_a_callback_sees_every_iteration_and_can_stop_the_run(tmp_path):
    config = from_dict(RunConfig, {"task": "synthetic", "task_kwargs": {"hidden_dim": 8}, "sampler": "heuristic",
                                   "n_iterations": 40, "eval_every": 5, "tensorboard": False})
    callback = StopAt(12)
    result = run_training(config, run_dir=tmp_path, progress=False, probe=False, callbacks=[callback])
    assert callback.seen == list(range(1, 13)) and callback.validated == [5, 10] and callback.ended
    assert result.summary["iterations"] == 12 and result.counts.shape == (12, 2)
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["iterations"] == 12 and np.load(tmp_path / "counts.npy").shape == (12, 2)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_flops_per_iteration_match_the_layers_by_hand(tmp_path):
    """unimodal-aux on MLP encoders d -> h -> h, heads h -> C, concatenation head 2h -> C, n samples each.

    A linear layer costs 2 n in out FLOPs forward, and as much for each of its two backward products
    (weight gradient; input gradient, which the first layer does not need): per modality
    4 n d h + 6 n h^2 + 6 n h C, plus 12 n h C for the fusion head.
    """
    config = from_dict(RunConfig, {
        "task": "synthetic", "task_kwargs": {"n_samples": 300, "dominant_dim": 32, "weak_dim": 8, "hidden_dim": 16},
        "learner": {"batch_size": 16}, "n_iterations": 6, "eval_every": 6, "tensorboard": False, "flops_every": 2})
    summary = run_training(config, run_dir=None, progress=False, probe=False).summary
    n, h, C = 16, 16, 10
    want = sum(4 * n * d * h + 6 * n * h * h + 6 * n * h * C for d in (32, 8)) + 12 * n * h * C
    assert summary["flops_per_iteration"] == want
    assert summary["optimizer_steps"] == 6 and set(summary["shapley"]) == {"dominant", "weak"}
    assert summary["balance"] == balance_degree(summary["shapley"])  # recorded beside the Shapley values
    for every in (None, 7):  # never; or not within a run of 6 iterations
        other = run_training(RunConfig(**{**config.__dict__, "flops_every": every}), progress=False, probe=False)
        assert other.summary["flops_per_iteration"] is None


TINY = {"n_iterations": 20, "iterations_per_step": 10, "task_kwargs": {"n_samples": 300, "hidden_dim": 8}}


def test_val_source_heuristic_runs_and_differs_from_train(tmp_path):
    base = family_config("synthetic-family-v1.yaml", {"n_iterations": 40, "task_kwargs": TINY["task_kwargs"]})
    family = TaskFamily.from_config(base.task, base.task_kwargs, base.family)
    histories = {}
    for source in ("train", "val"):
        config = case_config(base, family, 1, 0, "heuristic",
                             {"alpha": 30.0, "allocation": True, "n_min": 4, "source": source, "val_every": 10})
        histories[source] = run_training(from_dict(RunConfig, config), task=family.make(1), progress=False,
                                         probe=False).counts
    assert all(h.sum(1).tolist() == [32 * h.shape[1]] * 40 for h in histories.values())
    assert not np.array_equal(histories["train"], histories["val"])
