"""Core training: configuration, the multimodal model and learners, the batch plan, the CMD monitor, checkpoints.

Nothing here imports Gymnasium or Stable-Baselines3: samplers, the RL env and the experiments build on it.
"""
