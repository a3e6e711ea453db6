"""SB3 callbacks of a policy-training run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback
from stable_baselines3.common.logger import HParam

from dus_gym.core.files import atomic_path
from dus_gym.envs.wrappers import is_finite_info

STEP_KEYS = ("reward_delta", "reward_cmd", "reward_terminal")


class DUSMetricsCallback(BaseCallback):
    """Logs what the DUS envs report, next to SB3's rollout/ and train/ scalars.

    Tags (averaged over the steps or episodes of each rollout):

    - ``reward/delta``, ``reward/cmd``, ``reward/terminal``: the reward components of every step;
    - ``episode/val_acc``: fused validation accuracy at the end of each episode;
    - ``episode/gap``: final |CMD|;
    - ``episode/val_acc_<m>``, ``episode/mean_count_<m>``: per-modality accuracy and mean count;
    - ``episode/diverged``: share of episodes truncated by a NaN/inf loss;
    - ``episode/env_error``: share of episodes truncated because the env raised
      (:class:`dus_gym.envs.wrappers.ErrorRecoveryWrapper`); their other metrics are not averaged in.
    """

    def _on_step(self) -> bool:
        for info, done in zip(self.locals["infos"], self.locals["dones"], strict=True):
            for key in STEP_KEYS:
                if key in info:
                    self.logger.record_mean(f"reward/{key.removeprefix('reward_')}", float(info[key]))
            if not done:
                continue
            self.logger.record_mean("episode/diverged", float(bool(info.get("diverged", False))))
            self.logger.record_mean("episode/env_error", float("env_error" in info))
            for key, value in info.items():
                if (key == "val_acc" or key == "gap" or key.startswith(("val_acc_", "mean_count_"))) \
                        and is_finite_info(value):
                    self.logger.record_mean(f"episode/{key}", float(value))
        return True


class HParamCallback(BaseCallback):
    """Records the run's hyper-parameters in TensorBoard's HPARAMS tab (SB3's ``HParam``), when training starts.

    Args:
        hparams: flat name -> value (numbers, strings, booleans; anything else is shown as its string),
            e.g. the PPO entry and the env settings.
        metrics: the scalars the HPARAMS tab shows beside them (tag -> initial value); TensorBoard fills them
            from the logged scalars of the same tags.
    """

    def __init__(self, hparams: dict[str, Any], metrics: tuple[str, ...] = ("episode/val_acc", "rollout/ep_rew_mean")
                 ) -> None:
        super().__init__()
        self.hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparams.items()}
        self.metrics = metrics

    def _on_training_start(self) -> None:
        self.logger.record("hparams", HParam(self.hparams, dict.fromkeys(self.metrics, 0.0)),
                           exclude=("stdout", "log", "json", "csv"))

    def _on_step(self) -> bool:
        return True


class AtomicCheckpointCallback(CheckpointCallback):
    """SB3's CheckpointCallback, but every file is written to a temporary name and then renamed.

    A process killed while saving leaves the previous checkpoints intact and no half-written
    ``ppo_<n>_steps.zip`` for a resume to choke on. The VecNormalize statistics are written before
    the model, so a checkpoint's zip never exists without its statistics.

    Args:
        save_freq: save every this many calls of the callback (env steps per env).
        save_path: folder of the checkpoints.
        name_prefix: file name prefix.
        save_vecnormalize: also save the VecNormalize statistics.
        verbose: SB3 verbosity.
    """

    def __init__(self, save_freq: int, save_path: str, name_prefix: str = "rl_model",
                 save_vecnormalize: bool = False, verbose: int = 0) -> None:
        super().__init__(save_freq, save_path, name_prefix, save_replay_buffer=False,
                         save_vecnormalize=save_vecnormalize, verbose=verbose)

    def _on_step(self) -> bool:
        if self.n_calls % self.save_freq != 0:
            return True
        if self.save_vecnormalize and self.model.get_vec_normalize_env() is not None:
            statistics = Path(self._checkpoint_path("vecnormalize_", extension="pkl"))
            save_atomic(self.model.get_vec_normalize_env(), statistics)
        save_atomic(self.model, Path(self._checkpoint_path(extension="zip")))
        return True


def save_atomic(saveable: Any, path: Path) -> None:
    """``saveable.save(path)`` (an SB3 model or VecNormalize) through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        saveable.save(str(tmp))
