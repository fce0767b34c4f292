"""Exact-match rate of each batching strategy in bf16 against unbatched `model.generate` (bf16 and fp32), on GPU.

The rows are scripts/bench.py's GPU workload (log-uniform prompt lengths, a per-row max_new_tokens),
fewer of them so the unbatched oracle fits a short device lease. The oracle is each of the first
`--reference-rows` rows alone through `model.generate` (greedy, SDPA), in bf16 and in fp32; every
strategy runs all `--prompts` rows together in bf16 (so those rows share batches of realistic shapes;
`--dtypes bfloat16 float32` runs them in fp32 too) and its output on the reference rows is compared
token by token with the oracle of its dtype, and bf16 outputs also with the fp32 oracle (what bf16
itself changes, batching aside: `oracle_bf16_vs_fp32`).

bf16 cannot promise equality across batch shapes: a GEMM's kernel (and so its reduction order) is
chosen by shape, and padded prefills run SDPA with a mask (another kernel than the unmasked one), so a
logit can move by a bf16 rounding step and flip a near-tie. Hence a rate, not an assertion, and for each
diverging row whether the strategy's token at the first divergence is among the oracle's top-k there
(the check vLLM's tests make, tests/models/utils.py `check_logprobs_close`): a divergence outside the
top-k is a bug, not rounding. Results are written to --json after every measurement, so a timeout loses
only the one in progress; bf16 runs first for that reason.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

STRATEGIES = ["padded", "continuous", "generate"]
# `generate` batches only prompts of equal token length: on this workload's log-uniform lengths it runs
# nearly every row alone, i.e. as the oracle does, for minutes. Not run by default; tests/test_gpu.py
# checks it on the GPU against the oracle.
DEFAULT_STRATEGIES = ["padded", "continuous"]


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """Index of the first position where the two token lists differ (a length difference counts), else None."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def top_tokens(model, ids: list[int], k: int) -> tuple[list[int], list[float]]:
    """The model's top-k next tokens after `ids` (one unbatched forward) and their logits."""
    import torch

    with torch.inference_mode():
        logits = model(torch.tensor([ids], device=model.device)).logits[0, -1].float()
    top = torch.topk(logits, k)
    return top.indices.tolist(), top.values.tolist()


def unbatched(model, prompt: list[int], limit: int, eos: int) -> list[int]:
    """The oracle: one row alone through `model.generate`, greedy, cut at EOS."""
    import torch

    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt], device=model.device),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long, device=model.device),
            max_new_tokens=limit,
            do_sample=False,
            pad_token_id=eos,
        )
    tokens = out[0, len(prompt) :].tolist()
    return tokens[: tokens.index(eos)] if eos in tokens else tokens


def compare(got: list[list[int]], want: list[list[int]], prompts: list[list[int]], model, k: int) -> dict:
    """Exact rows, shared-prefix share of the oracle's tokens, and at each first divergence whether the
    strategy's token is in the oracle model's top-k (model None: skip that check)."""
    exact, prefix, in_top, gaps = 0, 0, 0, []
    for tokens, ref, prompt in zip(got, want, prompts, strict=True):
        at = first_divergence(tokens, ref)
        if at is None:
            exact, prefix = exact + 1, prefix + len(ref)
            continue
        prefix += at
        if model is not None and at < len(tokens) and at < len(ref):
            top, values = top_tokens(model, prompt + ref[:at], k)
            in_top += tokens[at] in top
            gaps.append(round(values[0] - values[top.index(tokens[at])], 4) if tokens[at] in top else None)
    figures = {
        "rows": len(want),
        "exact_rows": exact,
        "exact_rate": round(exact / len(want), 3),
        "prefix_token_share": round(prefix / max(sum(map(len, want)), 1), 3),
        "diverged": len(want) - exact,
    }
    if model is not None:
        figures |= {f"diverged_in_oracle_top{k}": in_top, "logit_gap_at_divergence": gaps}
    return figures


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="bench-1b", help="demo model (scripts/bench.py --gpu: bench-1b)")
    p.add_argument("--prompts", type=int, default=64, help="rows each strategy runs together")
    p.add_argument("--reference-rows", type=int, default=12, help="rows also run alone (the oracle)")
    p.add_argument("--max-len", type=int, default=2000, help="longest prompt in tokens (bench --gpu: 2000)")
    p.add_argument("--max-new", type=int, default=256, help="largest per-row max_new_tokens (bench: 256)")
    p.add_argument(
        "--dtypes",
        nargs="+",
        default=["bfloat16"],
        choices=["bfloat16", "float32"],
        help="dtypes the strategies run in (the fp32 oracle runs regardless, last)",
    )
    p.add_argument("--strategies", nargs="+", default=DEFAULT_STRATEGIES, choices=STRATEGIES)
    p.add_argument("--top-k", type=int, default=5, help="a divergence within the oracle's top-k is rounding")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--allow-cpu", action="store_true", help="run without CUDA (a smoke test of this script)")
    p.add_argument("--json", type=Path, help="write the results here (rewritten after each measurement)")
    return p.parse_args(argv)


def run_strategy(
    strategy: str, cfg, prompts: list[list[int]], rows: list[dict]
) -> tuple[list[list[int]], float]:
    """All rows through our engine with one strategy in one call: (token ids per row, seconds)."""
    import torch

    from runner.config import BatchingConfig, SamplingConfig
    from runner.engine import Engine, Request

    engine = Engine(cfg, SamplingConfig(), BatchingConfig(strategy=strategy, max_batch_size=256))
    try:
        requests = [Request(r["id"], p, r["limit"]) for r, p in zip(rows, prompts, strict=True)]
        start = time.perf_counter()
        done = engine.generate(requests)
        wall = time.perf_counter() - start
    finally:
        engine.close()
    del engine
    gc.collect()  # the continuous strategy's paged cache goes back before the next engine sizes its own
    torch.cuda.empty_cache()
    failed = next((c for c in done if c.error), None)
    if failed is not None:
        raise RuntimeError(f"row {failed.id}: {failed.error}")
    return [c.token_ids[0] for c in done], wall


def measure(
    args, dtype: str, strategies: list[str], rows: list[dict], report: dict, tokens: dict, save
) -> None:
    """The oracle in this dtype, then each of `strategies` in this dtype against it."""
    import torch

    from runner.config import ModelConfig, PlacementConfig
    from runner.engine.loading import load_model, load_tokenizer

    cfg = ModelConfig(path=f"demo:{args.model}", dtype=dtype, attention="sdpa")
    tokenizer = load_tokenizer(cfg)
    prompts = tokenizer([r["prompt"] for r in rows], add_special_tokens=True)["input_ids"]
    k = args.reference_rows
    oracle_model = load_model(cfg, PlacementConfig())
    eos = tokenizer.eos_token_id
    start = time.perf_counter()
    oracle = [unbatched(oracle_model, p, r["limit"], eos) for p, r in zip(prompts[:k], rows[:k], strict=True)]
    tokens[dtype, "oracle"] = oracle
    report["oracle_wall_s"][dtype] = round(time.perf_counter() - start, 1)
    save()
    for strategy in strategies:
        print(f"{dtype} {strategy} ...", file=sys.stderr, flush=True)
        entry = {"dtype": dtype, "strategy": strategy}
        try:
            got, wall = run_strategy(strategy, cfg, prompts, rows)
        except Exception as err:  # noqa: BLE001 - one strategy's failure is a result, the others still run
            report["results"].append(entry | {"error": f"{type(err).__name__}: {str(err)[:400]}"})
            save()
            continue
        tokens[dtype, strategy] = got[:k]
        entry |= {"wall_s": round(wall, 1), "generated_tokens": sum(map(len, got))}
        entry["vs_unbatched_same_dtype"] = compare(got[:k], oracle, prompts[:k], oracle_model, args.top_k)
        report["results"].append(entry)
        save()
    del oracle_model
    torch.cuda.empty_cache()


def against_fp32(report: dict, tokens: dict, prompts: list[list[int]]) -> None:
    """bf16 outputs (the oracle's and each strategy's) against the fp32 oracle, once both exist."""
    fp32 = tokens.get(("float32", "oracle"))
    if fp32 is None or ("bfloat16", "oracle") not in tokens:
        return
    report["oracle_bf16_vs_fp32"] = compare(tokens["bfloat16", "oracle"], fp32, prompts, None, 0)
    for entry in report["results"]:
        got = tokens.get((entry["dtype"], entry["strategy"]))
        if entry["dtype"] == "bfloat16" and got is not None:
            entry["vs_unbatched_fp32"] = compare(got, fp32, prompts, None, 0)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from bench import MODES, make_rows

    from runner.config import ModelConfig
    from runner.engine.loading import load_tokenizer

    if not (torch.cuda.is_available() or args.allow_cpu):
        print("gpu_exact.py needs a CUDA GPU", file=sys.stderr)
        return 2
    mode = dict(MODES["gpu"], model=args.model, max_len=args.max_len, max_new=args.max_new)
    rows = make_rows(load_tokenizer(ModelConfig(path=f"demo:{args.model}")), mode, args.prompts, args.seed)
    report = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "workload": {**mode, "prompts": args.prompts},
    }
    report |= {"reference_rows": args.reference_rows, "oracle_wall_s": {}, "results": []}
    tokens: dict[tuple[str, str], list[list[int]]] = {}

    def save() -> None:
        if args.json:
            args.json.write_text(json.dumps(report, indent=1))

    # bf16 first: it is what users run, and what a step timeout must not lose; the fp32 oracle last.
    for dtype in ["bfloat16", "float32"]:
        if dtype in args.dtypes or dtype == "float32":
            strategies = args.strategies if dtype in args.dtypes else []
            measure(args, dtype, strategies, rows, report, tokens, save)
    prompts = load_tokenizer(ModelConfig(path=f"demo:{args.model}"))(
        [r["prompt"] for r in rows[: args.reference_rows]]
    )
    against_fp32(report, tokens, prompts["input_ids"])
    save()
    for entry in report["results"]:
        same = entry.get("vs_unbatched_same_dtype", {})
        fp32 = entry.get("vs_unbatched_fp32", {})
        print(
            f"{entry['dtype']:9} {entry['strategy']:10} exact {same.get('exact_rate', 'n/a')}"
            f" prefix {same.get('prefix_token_share', 'n/a')} vs-fp32 {fp32.get('exact_rate', 'n/a')}"
            f" {entry.get('error', '')}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
