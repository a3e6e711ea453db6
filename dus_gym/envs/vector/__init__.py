"""N DUS envs at once: the batched core, SB3's VecEnv, Gymnasium's VectorEnv, Ray actors, and the kinds table."""
