"""The eval job kind: the eval config, scorers, the eval stage, multiple-choice scoring and metrics;
suites of runs, comparisons with regression gates, and HTML reports.

`job.run` runs it (`runner eval`; `cli/`: `eval`, `compare`, `report`); the engine's side of scoring
is `runner.engine.scoring`. Generation tasks run through `jobs.generate.stage.GenerationStage`.
"""
