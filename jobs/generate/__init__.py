"""The generate job kind: prompts from rows, per-row options, the generation stage, extra output columns.

`job.run` runs it (`runner run`, `cli.py`); `stage.GenerationStage` is what its replicas run, and what
the eval kind's stage runs its generation tasks through.
"""
