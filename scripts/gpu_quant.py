"""bitsandbytes on the GPU: 4-bit (nf4, double quant) and 8-bit throughput against bf16 on the same rows.

The rows are scripts/bench.py's GPU workload (fewer by default, to fit a short device lease), run by our
engine with `batching.strategy: auto` (bench.run_engine: all rows in one generate call). A short
warm-up run first keeps CUDA's one-time costs (context, cuBLAS handles) out of the bf16 figure. Each
row gives useful generated tokens/s, the ratio to bf16, peak device memory (weights included) and
the share of rows whose text equals bf16's (quantized weights are another model: no equality is expected,
the share says how far greedy outputs move). Beside each measurement, what the memory planner
(runner.planning, what `runner plan` prints) predicted for the same model, precision and device: the
weights' bytes against the loaded model's footprint, and the token budget it expects the engine to set.
The JSON is rewritten after each mode.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

MODES = ["bf16", "4bit", "8bit"]


def model_config(name: str, mode: str):
    from runner.config import ModelConfig

    quant = {"mode": "none"} if mode == "bf16" else {"mode": mode, "quant_type": "nf4", "double_quant": True}
    return ModelConfig(path=f"demo:{name}", dtype="bfloat16", quantization=quant)


def predicted(model_cfg, batching: dict) -> dict:
    """The planner's figures for this model on this machine's GPU (runner.planning.plan)."""
    from runner.config import build_config
    from runner.planning import Hardware, plan

    # A plan reads the model and batching only; data and output are required fields of any job.
    job = {"data": {"source": "rows.jsonl"}, "output": {"path": "plan-only"}}
    cfg = build_config({"model": model_cfg.model_dump(), "batching": batching, **job})
    p = plan(cfg, Hardware.this_machine())
    return {
        "planned_weights_gib": round(p.weights / 2**30, 3),
        "planned_token_budget": p.token_budget,
        "planned_rows_in_flight": p.rows_in_flight,
        "plan_verdict": p.verdict,
    }


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="bench-1b", help="demo model (scripts/bench.py --gpu: bench-1b)")
    p.add_argument("--prompts", type=int, default=256, help="rows (bench --gpu runs 512)")
    p.add_argument("--modes", nargs="+", default=["bf16", "4bit"], choices=MODES)
    p.add_argument("--strategy", default="auto", choices=["auto", "padded", "continuous", "generate"])
    p.add_argument("--max-batch-size", type=int, default=256, help="batching.max_batch_size (bench: 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--allow-cpu", action="store_true", help="run without CUDA (a smoke test of this script)")
    p.add_argument("--json", type=Path, help="write the results here (rewritten after each mode)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from bench import MODES as WORKLOADS
    from bench import make_rows, print_table, run_engine

    from runner.engine.loading import load_tokenizer

    if not (torch.cuda.is_available() or args.allow_cpu):
        print("gpu_quant.py needs a CUDA GPU", file=sys.stderr)
        return 2
    workload = dict(WORKLOADS["gpu"], model=args.model, prompts=args.prompts, rows=args.max_batch_size)
    rows = make_rows(load_tokenizer(model_config(args.model, "bf16")), workload, args.prompts, args.seed)
    batching = {"max_batch_size": args.max_batch_size}
    report = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "workload": workload,
        "strategy": args.strategy,
    }
    report["results"] = []
    print("warm-up ...", file=sys.stderr, flush=True)
    run_engine(args.strategy, model_config(args.model, "bf16"), rows[:8], batching)
    gc.collect()
    torch.cuda.empty_cache()
    results = {}
    for mode in args.modes:
        print(f"running {mode} ...", file=sys.stderr, flush=True)
        try:
            results[mode] = run_engine(args.strategy, model_config(args.model, mode), rows, batching)
        except Exception as err:  # noqa: BLE001 - one mode's failure is a result, the others still run
            report["results"].append({"mode": mode, "error": f"{type(err).__name__}: {str(err)[:400]}"})
            continue
        base = results.get("bf16", results[mode])
        row = results[mode].row(base, base.texts)
        names = {
            "contender": "strategy",
            "vs_baseline": "vs_bf16",
            "same_text_as_baseline": "same_text_as_bf16",
        }
        entry = {"mode": mode} | {names.get(k, k): v for k, v in row.items()}
        try:
            entry |= predicted(model_config(args.model, mode), batching)
            entry["loaded_weights_gib"] = round(results[mode].weights_gib, 3)
        except Exception as err:  # noqa: BLE001 - the planner's miss is a finding, not a reason to stop
            entry["plan_error"] = f"{type(err).__name__}: {str(err)[:300]}"
        report["results"].append(entry)
        if args.json:
            args.json.write_text(json.dumps(report, indent=1))
        gc.collect()  # the previous engine's caches go back before the next one sizes its own
        torch.cuda.empty_cache()
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    table = [r for r in report["results"] if "error" not in r]
    if table:
        print_table(table)
    for r in report["results"]:
        if "error" in r:
            print(f"{r['mode']}: {r['error']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
