"""Experiments: a full training run with any sampler, comparisons of samplers over seeds, and the bench."""
