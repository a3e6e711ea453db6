"""DUS envs: one multimodal training run as a Gymnasium episode, its registration, wrappers and rendering."""
