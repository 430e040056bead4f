"""Supervised fine-tuning of a causal LM on (context, reply) pairs: the "exposure" policy.

    karma sft --data PREPARED --output DIR --config configs/sft/NAME.yaml

`config` (dataclasses), `data` (text -> token batches, the loss mask) and `lineage` (which corpora a
model has seen) import no Ray; `train` runs the Ray Train loop; `cli` is `karma sft`.
"""
