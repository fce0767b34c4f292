"""Where a strategy's time goes on the GPU: the model's forwards (prefill and decode, each timed to the
end of its GPU work) against everything else the engine does, then torch.profiler's top operators.

  python scripts/gpu_profile.py --strategy padded --prompts 128 --json out.json

The rows are scripts/bench.py's GPU workload (bench-1b in bf16, log-uniform prompts of 16-2000 tokens,
a per-row max_new_tokens). Pass 1 runs every row with a hook that synchronises after each forward and
records its rows x positions and seconds, so `outside_forward_s` is the engine's own time (planning,
sampling, cache moves, Python) that the GPU waits on. Pass 2 runs `--profile-rows` rows under
torch.profiler and prints the operators that take the most device and host time. A short warm-up
first keeps CUDA's one-time costs out of both. `--allow-cpu` runs it without CUDA (a smoke test);
`--cpu` profiles scripts/bench.py's CPU workload instead (small-llama in fp32; `--max-len`, `--max-new`
as bench.py's), e.g. where `padded`'s time goes in the vLLM comparison of docs/performance.md:

  python scripts/gpu_profile.py --cpu --strategy padded --prompts 64 --max-len 512 --max-new 64
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


class ForwardTimer:
    """Times each forward of `model` to the end of its device work (a synchronize before and after)."""

    def __init__(self, model, cuda: bool):
        import torch

        self.sync = torch.cuda.synchronize if cuda else (lambda: None)
        self.calls: list[tuple[int, int, float]] = []  # rows, positions per row, seconds
        self._start = 0.0
        model.register_forward_pre_hook(self._before, with_kwargs=True)
        model.register_forward_hook(self._after, with_kwargs=True)
        self.on = False

    def _before(self, _module, args, kwargs):
        if self.on:
            self.sync()
            self._start = time.perf_counter()

    def _after(self, _module, args, kwargs, _output):
        if self.on:
            self.sync()
            ids = kwargs.get("input_ids", args[0] if args else None)
            shape = tuple(ids.shape) if ids is not None else (1, 1)
            self.calls.append((shape[0], shape[-1], time.perf_counter() - self._start))

    def summary(self) -> dict:
        decode = [c for c in self.calls if c[1] == 1]
        prefill = [c for c in self.calls if c[1] > 1]
        return {
            "forwards": len(self.calls),
            "decode_forwards": len(decode),
            "decode_s": round(sum(c[2] for c in decode), 3),
            "decode_ms_mean": round(1000 * sum(c[2] for c in decode) / max(len(decode), 1), 2),
            "decode_rows_mean": round(sum(c[0] for c in decode) / max(len(decode), 1), 1),
            "prefill_forwards": len(prefill),
            "prefill_s": round(sum(c[2] for c in prefill), 3),
            "prefill_positions": sum(c[0] * c[1] for c in prefill),
        }


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strategy", default="padded", choices=["padded", "continuous", "auto", "generate"])
    p.add_argument("--model", default="bench-1b")
    p.add_argument("--prompts", type=int, default=128)
    p.add_argument("--profile-rows", type=int, default=32)
    p.add_argument("--max-batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--allow-cpu", action="store_true")
    p.add_argument("--cpu", action="store_true", help="bench.py's CPU workload (small-llama in fp32)")
    p.add_argument(
        "--max-len", type=int, help="longest prompt in tokens (bench.py's default for the workload)"
    )
    p.add_argument("--max-new", type=int, help="largest per-row max_new_tokens (the workload's default)")
    p.add_argument("--json", type=Path)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from bench import MODES, make_rows

    from runner.config import BatchingConfig, ModelConfig, SamplingConfig
    from runner.engine import Engine, Request

    cuda = torch.cuda.is_available()
    if not (cuda or args.allow_cpu or args.cpu):
        print("gpu_profile.py needs a CUDA GPU (or --cpu)", file=sys.stderr)
        return 2
    mode = dict(MODES["cpu"]) if args.cpu else dict(MODES["gpu"], model=args.model)
    mode |= {k: v for k, v in {"max_len": args.max_len, "max_new": args.max_new}.items() if v is not None}
    model_cfg = ModelConfig(path=f"demo:{mode['model']}", dtype="float32" if args.cpu else "bfloat16")
    engine = Engine(
        model_cfg,
        SamplingConfig(),
        BatchingConfig(strategy=args.strategy, max_batch_size=args.max_batch_size),
    )
    rows = make_rows(engine.tokenizer, mode, args.prompts, args.seed)
    ids = engine.tokenize([r["prompt"] for r in rows])
    requests = [Request(r["id"], p, r["limit"]) for r, p in zip(rows, ids, strict=True)]
    report = {"strategy": engine.strategy, "device": torch.cuda.get_device_name() if cuda else "cpu"}
    engine.generate(requests[:8])  # warm-up
    timer = ForwardTimer(engine.model, cuda)
    timer.on = True
    start = time.perf_counter()
    done = engine.generate(requests)
    wall = time.perf_counter() - start
    timer.on = False
    tokens = sum(c.generated_tokens for c in done)
    report |= {
        "rows": len(requests),
        "wall_s": round(wall, 3),
        "tokens": tokens,
        "tok_s": round(tokens / wall, 1),
    }
    report |= timer.summary()
    report["outside_forward_s"] = round(wall - report["decode_s"] - report["prefill_s"], 3)
    print(json.dumps(report), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    activities = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if cuda else []
    )
    with torch.profiler.profile(activities=activities) as prof:
        engine.generate(requests[: args.profile_rows])
    engine.close()
    averages = prof.key_averages()
    for key in (["self_cuda_time_total"] if cuda else []) + ["self_cpu_time_total"]:
        table = averages.table(sort_by=key, row_limit=18, max_name_column_width=60)
        print(f"--- top operators by {key} ({args.profile_rows} rows)\n{table}", flush=True)
        report[f"top_by_{key}"] = table
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
