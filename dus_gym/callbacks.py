"""SB3 callbacks of a policy-training run."""

from __future__ import annotations

from stable_baselines3.common.callbacks import BaseCallback

STEP_KEYS = ("reward_delta", "reward_cmd", "reward_terminal")


class DUSMetricsCallback(BaseCallback):
    """Logs what the DUS envs report, next to SB3's rollout/ and train/ scalars.

    Tags (averaged over the steps or episodes of each rollout):

    - ``reward/delta``, ``reward/cmd``, ``reward/terminal``: the reward components of every step;
    - ``episode/val_acc``: fused validation accuracy at the end of each episode;
    - ``episode/gap``: final |CMD|;
    - ``episode/val_acc_<m>``, ``episode/mean_count_<m>``: per-modality accuracy and mean count;
    - ``episode/diverged``: share of episodes truncated by a NaN/inf loss.

    Args:
        verbose: SB3 verbosity.
    """

    def _on_step(self) -> bool:
        for info, done in zip(self.locals["infos"], self.locals["dones"], strict=True):
            for key in STEP_KEYS:
                if key in info:
                    self.logger.record_mean(f"reward/{key.removeprefix('reward_')}", float(info[key]))
            if not done:
                continue
            self.logger.record_mean("episode/diverged", float(bool(info.get("diverged", False))))
            for key, value in info.items():
                if key == "val_acc" or key == "gap" or key.startswith(("val_acc_", "mean_count_")):
                    self.logger.record_mean(f"episode/{key}", float(value))
        return True
