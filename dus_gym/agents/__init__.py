"""Agents of the DUS envs: the modality policy for SB3's PPO, its hyper-parameters and callbacks."""
