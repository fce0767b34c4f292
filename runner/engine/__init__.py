"""Model loading and batched generation, usable without Ray.

`Engine` is imported on first use: the driver imports the stage (to hand Ray the UDF class) but never
runs a model, and importing torch + transformers there would cost it seconds for nothing.
"""

from runner.engine.types import Completion, Request

__all__ = ["Completion", "Engine", "Request"]


def __getattr__(name: str):
    if name == "Engine":
        from runner.engine.engine import Engine

        return Engine
    raise AttributeError(f"module 'runner.engine' has no attribute {name!r}")
