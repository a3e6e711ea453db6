"""Train a DUS sampling policy with Stable-Baselines3 PPO, then evaluate it on held-out seeds.

    python train_policy.py                              # dus_gym/SyntheticFamily-v1, agents/ppo.yml
    python train_policy.py --env dus_gym/MFeat-v0 --seed 1
    python train_policy.py --resume runs/ppo-SyntheticFamily-v1-seed0_1

Same as ``dus-gym train-policy``; see ``python train_policy.py --help``.
"""

import argparse
import sys

from dus_gym.cli import main
from dus_gym.cli.train_policy import add_arguments as add_train_policy_arguments

if __name__ == "__main__":
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        parser = argparse.ArgumentParser(prog="train_policy.py", description=__doc__.splitlines()[0])
        add_train_policy_arguments(parser)
        parser.parse_args()
    sys.exit(main(["train-policy", *sys.argv[1:]]))
