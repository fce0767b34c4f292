"""Evaluation: the eval config, scorers, the eval stage, multiple-choice scoring and metrics.

Used by `jobs/eval.py` (`runner eval`); the engine's side of scoring is `runner.engine.scoring`.
"""
