"""Our per-sequence paged attention against transformers' own paged path, for the continuous strategy.

transformers' continuous batching on SDPA/eager computes one dense masked attention over the whole
packed batch; runner.engine.paged_attention computes each sequence on its own keys. This measures both
in one run on the same rows (each in its own process: the attention registration is process-wide),
alternating them `--repeats` times, and prints useful generated tokens/s, the ratio, and whether each
row's greedy text equals the padded strategy's (the exactness oracle's stand-in at this size).

  python scripts/bench_paged_attention.py [--rows 48] [--max-len 512] [--max-new 32] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rows(tokenizer, count: int, max_len: int, max_new: int, seed: int = 0) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    vocab = [t for t in range(tokenizer.vocab_size) if t not in tokenizer.all_special_ids]
    out = []
    for _ in range(count):
        length = int(2 ** rng.uniform(4, max_len.bit_length() - 1))
        out.append(([rng.choice(vocab) for _ in range(length)], rng.randint(max_new // 4, max_new)))
    return out


def measure(contender: str, args) -> dict:
    """Run one contender in this process: padded, ours (continuous + per-sequence attention) or
    transformers (continuous with transformers' own paged attention)."""
    from runner import compat
    from runner.config import BatchingConfig, ModelConfig, SamplingConfig
    from runner.engine import Engine, Request, paged_attention

    if contender == "transformers":
        paged_attention.install = lambda: None  # keep transformers' own attention functions
    strategy = "padded" if contender == "padded" else "continuous"
    batching = BatchingConfig(strategy=strategy, max_batch_size=64)
    engine = Engine(
        ModelConfig(path="demo:small-llama", dtype="float32"),
        SamplingConfig(max_new_tokens=args.max_new),
        batching,
    )
    work = rows(engine.tokenizer, args.rows, args.max_len, args.max_new)
    requests = [Request(f"r{i}", ids, limit) for i, (ids, limit) in enumerate(work)]
    before = paged_attention.calls
    started = time.perf_counter()
    done = engine.generate(requests)
    wall = time.perf_counter() - started
    engine.close()
    return {
        "contender": contender,
        "transformers": compat.version("transformers"),
        "tokens_per_s": sum(c.generated_tokens for c in done) / wall,
        "wall_s": wall,
        "per_sequence_calls": paged_attention.calls - before,
        "tokens": [c.token_ids[0] for c in done],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=48)
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument("--max-new", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args)))
        return 0
    flags = ["--rows", str(args.rows), "--max-len", str(args.max_len), "--max-new", str(args.max_new)]
    results: dict[str, list[dict]] = {}
    for contender in ["padded"] + ["ours", "transformers"] * args.repeats:
        out = subprocess.run(
            [sys.executable, __file__, *flags, "--one", contender], capture_output=True, text=True
        )
        if out.returncode != 0:
            print(out.stderr[-2000:], file=sys.stderr)
            return 1
        results.setdefault(contender, []).append(json.loads(out.stdout.strip().splitlines()[-1]))
    reference = results["padded"][0]["tokens"]
    print(f"transformers {results['ours'][0]['transformers']}, {args.rows} rows, greedy, fp32 CPU")
    print(f"{'contender':<14}{'tok/s (best)':>14}{'per-seq calls':>15}{'equal to padded':>17}")
    best = {}
    for contender, runs in results.items():
        best[contender] = max(r["tokens_per_s"] for r in runs)
        equal = sum(a == b for a, b in zip(runs[0]["tokens"], reference, strict=True))
        calls = runs[0]["per_sequence_calls"]
        print(f"{contender:<14}{best[contender]:>14.1f}{calls:>15}{f'{equal}/{len(reference)}':>17}")
    print(f"ours / transformers: {best['ours'] / best['transformers']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
