"""Tuning: a trial is pruned on its validation accuracy, at steps offset by the runs before it."""

import pytest

from dus_gym.core.config import RunConfig, from_dict

optuna = pytest.importorskip("optuna", reason="optuna (the tune extra) is not installed")


def test_pruning_on_validation_accuracy():
    from dataclasses import replace

    from dus_gym.experiments.run import run_training
    from dus_gym.experiments.tune import PruneOnValidation

    config = from_dict(RunConfig, {"task": "synthetic", "n_iterations": 30, "eval_every": 10,
                                   "task_kwargs": {"n_samples": 300, "dominant_dim": 32, "hidden_dim": 16}})
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=1.01))
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned, match="step 10"):  # below the threshold at the first validation
        run_training(replace(config, seed=0), progress=False, probe=False,
                     callbacks=[PruneOnValidation(trial, run_index=0)])
    assert list(trial.storage.get_trial(trial._trial_id).intermediate_values) == [10]
    kept = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.0))
    trial = kept.ask()
    run_training(replace(config, seed=0), progress=False, probe=False, callbacks=[PruneOnValidation(trial, 1)])
    assert sorted(kept.trials[0].intermediate_values) == [40, 50, 60]  # steps offset by one run's budget
