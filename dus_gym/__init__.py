"""dus-gym: Data-aware Unimodal Sampling (DUS) for multimodal learning, as a reinforcement-learning problem."""

__version__ = "0.1.0"
