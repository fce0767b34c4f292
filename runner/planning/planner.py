"""The plan for one job on some hardware: replicas, their placement, their token budget, a verdict.

Per replica of k GPUs (each `gpu_memory`, less `CUDA_RESERVE` for the CUDA context, cuBLAS workspace
and allocator slack):
- weights per device: the skeleton placed under the `max_memory` the plan would set (runner.planning.
  weights), or the config's own;
- activation headroom on each GPU: one prefill of the rows a batch holds (the token budget over
  `prompt_tokens + max_new_tokens`, at most max_batch_size) x `prompt_tokens`, `4 x hidden + 3 x
  intermediate` values per position (residual, attention and MLP transients of one layer, as
  runner.engine.memory counts them) plus float32 logits per row;
- KV tokens: the cache positions the rest holds (on the GPU whose layers leave the least room);
- the token budget the engine will set (runner.engine.memory.token_budget: the free memory after
  load on the replica's first GPU x memory_fraction, over its per-token estimate), or the config's;
- rows in flight: the budget's rows of `prompt_tokens + max_new_tokens`, at most max_batch_size and
  at most the rows whose whole cache fits.
Verdict: fits (weights on GPUs, one row's cache fits), fits only with CPU offload, or does not fit;
when it does not fit, the first change that makes it fit (runner.planning.changes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from runner.config import JobConfig, ModelConfig, parse_size
from runner.engine import memory
from runner.engine.architecture import Architecture
from runner.engine.loading import Devices, resolve_dtype
from runner.engine.strategy import choose_strategy
from runner.planning.hardware import GIB, Hardware
from runner.planning.kv import CacheCost, cache_cost
from runner.planning.weights import Skeleton

CUDA_RESERVE = GIB
PROMPT_TOKENS = 1024  # the prompt length planned for when none is given (runner plan --prompt-tokens)
HBM_BYTES_PER_S = 2e12  # a data-centre GPU's memory bandwidth
PCIE_BYTES_PER_S = 25e9  # what offloaded weights stream at, host to GPU, each forward pass
_SKELETONS: dict[tuple[str, str], Skeleton] = {}  # read-only once built: shared by plans of one process


@dataclass
class Plan:
    """One replica layout and what it leaves for batching; `line` is the one-line verdict."""

    model: str
    precision: str
    hardware: str
    strategy: str
    gpus_per_replica: int
    max_memory: dict[str, str] | None
    weights: int
    weights_by_device: dict[str, int]
    kv_per_token: int
    state_per_row: int
    row_tokens: int
    row_bytes: int
    headroom: int
    kv_tokens: int
    rows_fit: int
    token_budget: int
    rows_in_flight: int
    replicas_per_node: list[int]
    replicas: int
    verdict: str  # fits | offload | no
    problem: str = ""
    change: str = ""
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def offloaded(self) -> int:
        return sum(v for k, v in self.weights_by_device.items() if k in ("cpu", "disk"))


class Planner:
    """Plans one job config on one hardware; skeletons are built once per quantization setting."""

    def __init__(self, cfg: JobConfig, hardware: Hardware, prompt_tokens: int = PROMPT_TOKENS):
        self.cfg, self.hardware, self.prompt_tokens = cfg, hardware, prompt_tokens
        self.devices = Devices(cuda=hardware.has_gpus, gpu_count=hardware.largest_node, bf16=True)

    def skeleton(self, model: ModelConfig) -> Skeleton:
        dtype = resolve_dtype(model.dtype, self.devices)
        key = (model.model_dump_json(), str(dtype))
        if key not in _SKELETONS:
            if len(_SKELETONS) >= 8:  # a meta model holds no storage, but its modules add up
                _SKELETONS.pop(next(iter(_SKELETONS)))
            _SKELETONS[key] = Skeleton.build(model, dtype)
        return _SKELETONS[key]

    def replica(self, model: ModelConfig, k: int, max_new_tokens: int) -> Plan:
        """The plan for replicas of `k` GPUs (0: CPU replicas) with this model setting."""
        sk = self.skeleton(model)
        devices = {f"cuda:{i}" for i in range(k)} if k else {"cpu"}
        strategy, _ = choose_strategy(self.cfg.batching.strategy, devices, _architecture(sk))
        cost = cache_cost(sk.config, _cache_dtype(sk), strategy)
        row_tokens = self.prompt_tokens + max_new_tokens
        if k == 0:
            return self._cpu(model, sk, cost, strategy, row_tokens)
        return self._gpu(model, sk, cost, strategy, k, row_tokens)

    def _gpu(self, model, sk: Skeleton, cost: CacheCost, strategy: str, k: int, row_tokens: int) -> Plan:
        batching, hw = self.cfg.batching, self.hardware
        usable = hw.gpu_memory - CUDA_RESERVE
        row = cost.row_bytes(row_tokens)
        # The prefill the headroom is for is bounded by the token budget, which depends on the weights
        # on the first GPU: place once without headroom to find it, then with it.
        first = sk.bytes_by_device(sk.place(self._caps(k, usable - row // k)[0])).get(0, 0)
        # A batch's rows are cut by the budget counting prompt + new tokens (runner.engine.batching).
        rows = max(1, min(batching.max_batch_size, self._budget(sk, usable - first) // row_tokens))
        prefill = rows * self.prompt_tokens
        headroom = activation_bytes(sk, prefill, batching)
        caps, auto, device_map = self._place(sk, k, usable - headroom, row)
        by_device = sk.bytes_by_device(device_map)
        layer_devices = sk.layer_devices(device_map)
        rows_fit, kv_tokens = _room(cost, layer_devices, by_device, k, usable - headroom, row_tokens)
        budget = self._budget(sk, usable - by_device.get(0, 0))
        per_node = [g // k for g in hw.gpus_per_node]
        offloaded = sum(v for d, v in by_device.items() if d in ("cpu", "disk"))
        shown_caps = (
            {str(d): f"{v // 2**20}MiB" for d, v in caps.items()} if auto else self.cfg.placement.max_memory
        )
        plan = Plan(
            model=self.cfg.model.path,
            precision=precision(model, sk.dtype),
            hardware=hw.source,
            strategy=strategy,
            gpus_per_replica=k,
            max_memory=shown_caps if (k > 1 or offloaded or not auto) else None,
            weights=sk.weight_bytes,
            weights_by_device={str(d): v for d, v in sorted(by_device.items(), key=lambda kv: str(kv[0]))},
            kv_per_token=cost.per_token,
            state_per_row=cost.per_row,
            row_tokens=row_tokens,
            row_bytes=row,
            headroom=headroom,
            kv_tokens=kv_tokens,
            rows_fit=rows_fit,
            token_budget=budget,
            rows_in_flight=max(0, min(batching.max_batch_size, budget // row_tokens, rows_fit)),
            replicas_per_node=per_node,
            replicas=min(self.cfg.placement.replicas or sum(per_node), sum(per_node)),
            verdict="fits",
        )
        return _judge(plan, by_device, k, hw, quantized=sk.quantizer is not None)

    def _place(self, sk: Skeleton, k: int, room: int, row: int) -> tuple[dict, bool, dict]:
        """(max_memory, whether the plan chose it, device map). Each GPU keeps its share of one row's
        cache free, unless that alone would push weights off the GPUs (the verdict then names the row)."""
        caps, auto = self._caps(k, room - row // k)
        device_map = sk.place(caps)
        if auto and _offloads(device_map):
            tight, _ = self._caps(k, room)
            tight_map = sk.place(tight)
            if not _offloads(tight_map):
                return tight, auto, tight_map
        return caps, auto, device_map

    def _budget(self, sk: Skeleton, free_after_load: int) -> int:
        """The engine's token budget (runner.engine.memory.token_budget) for this free memory."""
        batching = self.cfg.batching
        if batching.token_budget is not None:
            return batching.token_budget
        share = int(max(free_after_load, 0) * batching.memory_fraction)
        return max(memory.MIN_TOKEN_BUDGET, share // memory.bytes_per_token(sk.model))

    def _caps(self, k: int, gpu_cap: int) -> tuple[dict[int | str, int], bool]:
        """The max_memory to place with: the config's, else each GPU's room after headroom and its
        share of one row's cache, plus the node's CPU memory shared by its replicas."""
        given = self.cfg.placement.max_memory
        if isinstance(given, dict):
            return {int(d) if d.isdigit() else d: parse_size(v) for d, v in given.items()}, False
        caps: dict[int | str, int] = {i: max(gpu_cap, 0) for i in range(k)}
        cpu = self.hardware.cpu_memory
        if cpu:
            caps["cpu"] = int(cpu * 0.8) // max(1, self.hardware.largest_node // k)
        return caps, True

    def _cpu(self, model, sk: Skeleton, cost: CacheCost, strategy: str, row_tokens: int) -> Plan:
        batching, cpu = self.cfg.batching, self.hardware.cpu_memory
        replicas = self.cfg.placement.replicas or 1
        budget = batching.token_budget or memory.CPU_TOKEN_BUDGET
        room = (int(cpu * 0.8) // replicas - sk.weight_bytes) if cpu else 2**62
        rows_fit = max(room, 0) // max(cost.row_bytes(row_tokens), 1)
        plan = Plan(
            model=self.cfg.model.path,
            precision=precision(model, sk.dtype),
            hardware=self.hardware.source,
            strategy=strategy,
            gpus_per_replica=0,
            max_memory=None,
            weights=sk.weight_bytes,
            weights_by_device={"cpu": sk.weight_bytes},
            kv_per_token=cost.per_token,
            state_per_row=cost.per_row,
            row_tokens=row_tokens,
            row_bytes=cost.row_bytes(row_tokens),
            headroom=0,
            kv_tokens=max(room, 0) // max(cost.per_token, 1),
            rows_fit=rows_fit,
            token_budget=budget,
            rows_in_flight=max(0, min(batching.max_batch_size, budget // row_tokens, rows_fit)),
            replicas_per_node=[replicas],
            replicas=replicas,
            verdict="fits" if rows_fit >= 1 else "no",
        )
        if rows_fit < 1:
            plan.problem = f"{replicas} CPU replica(s) x {sk.weight_bytes / GIB:.1f} GiB exceed 80% of {cpu / GIB:.0f} GiB"
        return plan


def _offloads(device_map: dict) -> bool:
    return any(d in ("cpu", "disk") for d in device_map.values())


def _room(cost: CacheCost, layer_devices, by_device, k: int, usable: int, row_tokens: int) -> tuple[int, int]:
    """(whole rows, cache positions) the replica's GPUs hold after weights and headroom: the GPU
    with the least room for its own layers' cache decides."""
    rows, tokens = [], []
    for gpu in range(k):
        mine = [i for i, d in enumerate(layer_devices) if d == gpu]
        if not mine:
            continue
        free = max(usable - by_device.get(gpu, 0), 0)
        rows.append(free // max(cost.row_bytes(row_tokens, mine), 1))
        tokens.append(free // max(sum(cost.layers[i].per_token for i in mine), 1))
    return min(rows, default=0), min(tokens, default=0)


def _judge(plan: Plan, by_device: dict, k: int, hw: Hardware, quantized: bool) -> Plan:
    if k > hw.largest_node:
        plan.verdict, plan.problem = "no", f"{k} GPUs per replica, but the largest node has {hw.largest_node}"
    elif by_device.get("disk"):
        gpu = sum(v for d, v in by_device.items() if isinstance(d, int))
        plan.verdict = "no"
        plan.problem = (
            f"{plan.weights / GIB:.1f} GiB of weights: {gpu / GIB:.1f} GiB fit on {k} x "
            f"{hw.gpu_memory / GIB:.0f} GiB GPU(s), the rest not even in CPU memory"
        )
    elif by_device.get("cpu") and quantized:
        plan.verdict = "no"  # bitsandbytes_4bit/8bit validate_environment refuses CPU-dispatched modules
        plan.problem = (
            f"{by_device['cpu'] / GIB:.1f} GiB of {plan.weights / GIB:.1f} GiB weights would go to CPU, "
            "which transformers refuses for bitsandbytes weights"
        )
    elif by_device.get("cpu"):
        plan.verdict = "offload"
        plan.problem = f"{by_device['cpu'] / GIB:.1f} GiB of {plan.weights / GIB:.1f} GiB weights on CPU"
    elif plan.rows_fit < 1:
        plan.verdict = "no"
        plan.problem = (
            f"one row of {plan.row_tokens} tokens needs {plan.row_bytes / GIB:.2f} GiB of cache; "
            f"{k} x {hw.gpu_memory / GIB:.0f} GiB GPU(s) leave room for {plan.kv_tokens} positions"
        )
    return plan


def offload_slowdown(plan: Plan) -> float:
    """How many times slower a forward pass is when the offloaded weights stream over PCIe each time
    (weights are read once per decode step; an estimate from bandwidths, not a measurement)."""
    on_gpu = plan.weights - plan.offloaded
    slow = on_gpu / HBM_BYTES_PER_S + plan.offloaded / PCIE_BYTES_PER_S
    return slow / (plan.weights / HBM_BYTES_PER_S)


def activation_bytes(sk: Skeleton, prefill_tokens: int, batching) -> int:
    """Transient bytes of one prefill of `prefill_tokens` positions over `max_batch_size` rows."""
    text = sk.config.get_text_config(decoder=True)
    hidden = text.hidden_size
    inter = getattr(text, "intermediate_size", None) or 4 * hidden
    width = torch.finfo(_cache_dtype(sk)).bits // 8
    logits = batching.max_batch_size * text.vocab_size * 4
    return prefill_tokens * (4 * hidden + 3 * inter) * width + logits


def precision(model: ModelConfig, dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    quant = model.quantization
    if quant.mode == "8bit":
        return f"{name} + 8-bit"
    if quant.mode == "4bit":
        return f"{name} + 4-bit {quant.quant_type}{' dq' if quant.double_quant else ''}"
    return name


def _cache_dtype(sk: Skeleton) -> torch.dtype:
    """The dtype the cache and activations are in: the compute dtype (4-bit's when it names one)."""
    quant = sk.quantizer.quantization_config if sk.quantizer else None
    compute = quant.bnb_4bit_compute_dtype if quant is not None and quant.load_in_4bit else None
    return compute if isinstance(compute, torch.dtype) else sk.dtype


def _architecture(sk: Skeleton) -> Architecture:
    return Architecture.of(sk.model)
