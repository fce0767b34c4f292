"""The memory and placement planner: will a job's model fit, and how should it be placed.

Everything here works from the model's `config.json` alone (a skeleton on the meta device, no
weights) and never imports Ray: `runner plan` and the job's start check (runner.planning.start) feed
it the hardware they read (flags, this machine, or the Ray cluster's nodes via `runner.orchestration.cluster`).
Importing this package is light; torch and transformers load when a plan is made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runner.planning.hardware import Hardware, Node

if TYPE_CHECKING:
    from runner.config import JobConfig
    from runner.planning.planner import Plan


def plan(cfg: JobConfig, hardware: Hardware, prompt_tokens: int = 1024) -> Plan:
    """The plan for `cfg` on `hardware` (runner.planning.planner; the layout and the fix: .changes)."""
    from runner.planning.changes import best_plan
    from runner.planning.planner import Planner

    return best_plan(Planner(cfg, hardware, prompt_tokens))


__all__ = ["Hardware", "Node", "plan"]
