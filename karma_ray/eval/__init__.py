"""Evaluation of checkpoints (`karma eval`): task specs (tasks.py, tasks/*.yaml), dataset loaders of
the original files (loaders.py), multiple choice through lm-evaluation-harness (harness.py),
generation tasks on the rollout engines (generation.py), statistics (stats.py), the report
(report.py) and the stage (run.py: `run_eval`). Importing this package imports nothing heavy."""
