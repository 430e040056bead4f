"""Evaluation of policies (issue: `karma eval`). So far: `stats`, the confidence intervals and paired
tests every reported metric carries (numpy and scipy only)."""
