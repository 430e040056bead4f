"""Supervised fine-tuning of a causal LM on (context, reply) pairs: the "exposure" policy.

    karma sft --data PREPARED --output DIR --config configs/sft/NAME.yaml

`config` (dataclasses) and `data` (text -> token batches, the loss mask) import no Ray (lineage, which
corpora a model has seen, is karma_ray.lineage: PPO and evaluation read it too); `train` runs the Ray Train loop; `cli` is `karma sft`.
"""
