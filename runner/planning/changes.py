"""Which replica layout a job gets, and when it does not fit, the smallest change that makes it fit.

Layout: the configured `gpus_per_replica`, or for `auto` the fewest GPUs per replica that fit (more
replicas from the same GPUs). Changes, tried in order, the first that fits wins: when only the cache
of one row is short, a shorter `sampling.max_new_tokens` (the longest that fits), then more GPUs per
replica; when the weights are, more GPUs per replica (no quality change), then 8-bit, then 4-bit,
then a quantization with more GPUs.
"""

from __future__ import annotations

from runner.config import ModelConfig
from runner.errors import ConfigError
from runner.planning.hardware import GIB
from runner.planning.planner import Plan, Planner


def best_plan(p: Planner) -> Plan:
    """The plan the job would run, with its change (when it does not fit) and its reasons (auto)."""
    hw, placement = p.hardware, p.cfg.placement
    new_tokens = max_new_tokens(p.cfg)
    if hw.has_gpus and hw.gpu_memory is None:
        raise ConfigError(
            "GPU memory unknown: give --gpu-memory (e.g. 80GiB), or label the Ray nodes "
            '(ray start --labels=\'{"gpu-memory": "80GiB"}\')'
        )
    if not hw.has_gpus:
        plan = p.replica(p.cfg.model, 0, new_tokens)
    elif placement.gpus_per_replica == "auto":
        plan = _auto(p, new_tokens)
    else:
        plan = p.replica(p.cfg.model, placement.gpus_per_replica, new_tokens)
    if placement.max_memory == "auto":
        plan.reasons["max_memory"] = _max_memory_reason(plan)
    if plan.verdict != "fits":
        plan.change = smallest_change(p, plan, new_tokens)
    return plan


def max_new_tokens(cfg) -> int:
    sampling = getattr(cfg, "sampling", None)
    return sampling.max_new_tokens if sampling is not None else 1


def _auto(p: Planner, new_tokens: int) -> Plan:
    largest = p.hardware.largest_node
    tried = None
    for k in range(1, largest + 1):
        tried = p.replica(p.cfg.model, k, new_tokens)
        if tried.verdict == "fits":
            fewest, k = k, _widest(p.hardware.gpus_per_node, k)
            tried = tried if k == fewest else p.replica(p.cfg.model, k, new_tokens)
            wider = f", widened to {k} (as many replicas, more cache)" if k != fewest else ""
            tried.reasons["gpus_per_replica"] = (
                f"{k}: {fewest} is the fewest GPUs per replica that hold the {tried.weights / GIB:.1f} GiB of "
                f"weights and the cache of a {tried.row_tokens}-token row{wider}"
            )
            return tried
    tried.reasons["gpus_per_replica"] = f"{largest}: the largest node's GPUs (no smaller replica fits)"
    return tried


def _widest(node_gpus: list[int], k: int) -> int:
    """The most GPUs per replica that keep as many replicas as `k` gives (idle GPUs become cache)."""
    replicas = sum(g // k for g in node_gpus)
    return max(j for j in range(k, max(node_gpus) + 1) if sum(g // j for g in node_gpus) == replicas)


def _max_memory_reason(plan: Plan) -> str:
    if plan.max_memory is None:
        return "none needed: the weights fit on the replica's one GPU"
    return (
        f"each GPU's memory less 1 GiB CUDA reserve, {plan.headroom / GIB:.1f} GiB activation headroom "
        "and its share of one row's cache; cpu: 80% of the node's memory over its replicas"
    )


def smallest_change(p: Planner, plan: Plan, new_tokens: int) -> str:
    """The first candidate change that fits, as the config line to write ('' when none does)."""
    for label, model, k, tokens in _candidates(p, plan, new_tokens):
        if p.replica(model, k, tokens).verdict == "fits":
            return label
    return ""


def _candidates(p: Planner, plan: Plan, new_tokens: int):
    model, k, largest = p.cfg.model, plan.gpus_per_replica, p.hardware.largest_node
    more = [(f"placement.gpus_per_replica: {j}", model, j, new_tokens) for j in range(k + 1, largest + 1)]
    if k > largest:
        more = [(f"placement.gpus_per_replica: {largest}", model, largest, new_tokens)]
    quantized = [(f"model.quantization.mode: {mode}", _with_mode(model, mode)) for mode in _lighter(model)]
    with_quant = [(label, m, k, new_tokens) for label, m in quantized]
    combined = [
        (f"{label} and placement.gpus_per_replica: {j}", m, j, new_tokens)
        for label, m in quantized
        for j in range(k + 1, largest + 1)
    ]
    if plan.verdict == "no" and not plan.offloaded and k <= largest:  # the weights fit: the cache does not
        yield from _shorter(p, model, k, new_tokens)
        yield from more
        return
    yield from more
    yield from with_quant
    yield from combined


def _shorter(p: Planner, model: ModelConfig, k: int, new_tokens: int):
    """The longest max_new_tokens below the configured one that fits (binary search), if any."""
    if new_tokens <= 1 or p.replica(model, k, 1).verdict != "fits":
        return
    low, high = 1, new_tokens - 1
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if p.replica(model, k, mid).verdict == "fits" else (low, mid - 1)
    yield (f"sampling.max_new_tokens: {low}", model, k, low)


def _lighter(model: ModelConfig) -> list[str]:
    return {"none": ["8bit", "4bit"], "8bit": ["4bit"]}.get(model.quantization.mode, [])


def _with_mode(model: ModelConfig, mode: str) -> ModelConfig:
    quant = model.quantization.model_copy(update={"mode": mode})
    return model.model_copy(update={"quantization": quant})
