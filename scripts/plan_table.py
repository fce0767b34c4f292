"""Print the README's planner table: public models (configs shipped in tests/data/model_configs)
planned on 1 x 24 GB, 1 x 80 GB and 8 x 80 GB GPUs in bf16 / 8-bit / 4-bit, offline, no weights.

Each case is the job config `gpus_per_replica: auto, max_memory: auto` with the default sampling
(max_new_tokens 128) and batching, rows of 1024 prompt tokens, and 256 GiB of CPU memory per node
(fixed, so the table does not depend on the machine that prints it).

    python scripts/plan_table.py            # the markdown table
    python scripts/plan_table.py --lines    # each case's full verdict line too
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from runner.config import build_config
from runner.planning import Hardware, plan
from runner.planning.hardware import GB, GIB
from runner.planning.planner import offload_slowdown
from runner.planning.report import verdict_line

CONFIGS = Path(__file__).resolve().parent.parent / "tests" / "data" / "model_configs"
MODELS = ["llama-3.1-8b", "llama-3.1-70b", "mixtral-8x7b", "qwen2.5-32b", "gemma-2-27b"]
HARDWARE = [("1 x 24 GB", 1, 24), ("1 x 80 GB", 1, 80), ("8 x 80 GB", 8, 80)]
PRECISIONS = [("bf16", "none"), ("8-bit", "8bit"), ("4-bit", "4bit")]


def case(model: str, mode: str, gpus: int, memory_gb: int):
    cfg = build_config(
        {
            "model": {"path": str(CONFIGS / model), "dtype": "bfloat16", "quantization": {"mode": mode}},
            "data": {"source": "prompts.jsonl"},
            "placement": {"gpus_per_replica": "auto", "max_memory": "auto"},
        }
    )
    return plan(cfg, Hardware.uniform(1, gpus, memory_gb * GB, 256 * GIB))


def verdict(result) -> str:
    if result.verdict == "fits":
        return f"fits, {result.gpus_per_replica} GPU/replica"
    fix = f"; fits with `{result.change}`" if result.change else ""
    if result.verdict == "offload":
        return f"CPU offload (~{offload_slowdown(result):.0f}x slower){fix}"
    return f"does not fit{fix}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", action="store_true", help="also print each case's verdict line")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    print("| model | GPUs | precision | weights | KV tokens / replica | replicas | verdict |")
    print("|---|---|---|---|---|---|---|")
    lines = []
    for model in MODELS:
        for label, gpus, memory in HARDWARE:
            for name, mode in PRECISIONS:
                result = case(model, mode, gpus, memory)
                kv = f"{result.kv_tokens:,}" if result.verdict == "fits" else "-"
                replicas = result.replicas if result.verdict == "fits" else "-"
                weights = f"{result.weights / GIB:.1f} GiB"
                print(f"| {model} | {label} | {name} | {weights} | {kv} | {replicas} | {verdict(result)} |")
                lines.append(f"{model} {label} {name}: {verdict_line(result)}")
    if args.lines:
        print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
