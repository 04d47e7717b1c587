"""Trainer pieces: batch building, log-probs, the update, weight sync, checkpoints, metrics."""
