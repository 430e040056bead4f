"""Reward models of Reddit karma: inputs, model, losses, metrics, Ray Train loop, Ray Tune sweep, scorer.

Flow: a prepared corpus (`karma prepare`) -> `karma train-rm` (train.py, one TorchTrainer) or
`karma sweep-rm` (sweep.py, Tune over TorchTrainers) -> an exported folder that
`scorer.RewardScorer.from_pretrained(path)` scores with (PPO uses exactly that).

Importing this package, its config, inputs, losses, metrics or scorer modules does not import ray.
"""
