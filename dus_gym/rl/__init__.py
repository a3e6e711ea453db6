"""Training as a Gymnasium env, vectorised envs, and PPO training of a sampling policy (Stable-Baselines3)."""
