"""Model loading and batched generation, usable without Ray."""

from runner.engine.engine import Engine
from runner.engine.types import Completion, Request

__all__ = ["Completion", "Engine", "Request"]
