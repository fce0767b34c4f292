"""A plan as one table and a one-line verdict (`runner plan`), or as JSON (`runner plan --json`)."""

from __future__ import annotations

import dataclasses

from runner.planning.hardware import GIB
from runner.planning.planner import Plan, offload_slowdown


def size(n: int) -> str:
    """Bytes, human-sized."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def verdict_line(plan: Plan) -> str:
    """fits / fits only with CPU offload / does not fit, with the smallest change that makes it fit."""
    if plan.verdict == "fits":
        return (
            f"fits: {plan.replicas} replica(s) x {plan.gpus_per_replica or 'CPU'} "
            f"{'GPU' if plan.gpus_per_replica else ''}".rstrip()
            + f", {plan.kv_tokens:,} KV tokens and {plan.rows_in_flight} rows in flight per replica"
        )
    fix = f"; fits with {plan.change}" if plan.change else "; no change tried makes it fit"
    if plan.verdict == "offload":
        slower = offload_slowdown(plan)
        return f"fits only with CPU offload: {plan.problem}, about {slower:.0f}x slower per step{fix}"
    return f"does not fit: {plan.problem}{fix}"


def placement_text(plan: Plan) -> str:
    memory = plan.max_memory
    shown = "none" if memory is None else "{" + ", ".join(f"{k}: {v}" for k, v in memory.items()) + "}"
    return f"gpus_per_replica: {plan.gpus_per_replica}, max_memory: {shown}"


def rows(plan: Plan) -> list[tuple[str, str]]:
    """The table: (what, value) rows."""
    by_device = ", ".join(f"{d}: {size(v)}" for d, v in plan.weights_by_device.items())
    state = f", {size(plan.state_per_row)} state per row" if plan.state_per_row else ""
    return [
        ("model", plan.model),
        ("precision", plan.precision),
        ("hardware", plan.hardware),
        ("strategy", plan.strategy),
        ("weights", f"{size(plan.weights)} per replica ({by_device})"),
        (
            "KV cache",
            f"{size(plan.kv_per_token)} per token{state}; {size(plan.row_bytes)} per {plan.row_tokens}-token row",
        ),
        ("headroom", f"{size(plan.headroom)} activations per GPU" if plan.gpus_per_replica else "-"),
        ("KV tokens", f"{plan.kv_tokens:,} per replica"),
        ("token_budget", f"{plan.token_budget:,}"),
        ("rows in flight", f"{plan.rows_in_flight} per replica"),
        ("replicas", f"{'/'.join(map(str, plan.replicas_per_node))} per node, {plan.replicas} in all"),
        ("placement", placement_text(plan)),
    ] + [(f"  {name}", why) for name, why in plan.reasons.items()]


def table(plan: Plan) -> str:
    """The table and the verdict line, as printed by `runner plan`."""
    width = max(len(k) for k, _ in rows(plan))
    body = "\n".join(f"{k:<{width}}  {v}" for k, v in rows(plan))
    return f"{body}\n{verdict_line(plan)}"


def as_json(plan: Plan) -> dict:
    out = dataclasses.asdict(plan)
    out["line"] = verdict_line(plan)
    out["weights_gib"] = round(plan.weights / GIB, 2)
    return out
