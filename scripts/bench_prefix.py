"""The shared-prefix workload of scripts/bench.py (`--workload shared-prefix`): prefix sharing on
against the same strategy with `batching.prefix_sharing: false`, all in one run.

  generation  rows = one shared system prompt + a question each, greedy, a per-row max_new_tokens;
              the full `runner run` job through a local Ray (as bench.py's ray-job contender),
              padded strategy, sharing on vs off: wall time of the job, the two outputs' texts
              compared, `prefix_tokens_reused` from `_job.json`
  eval        four-choice questions, each context = one shared few-shot block + the question;
              `Engine.score` over every (context, choice) pair, sharing on vs off: wall time, the
              largest difference between the two runs' log-likelihoods
  engine      the generation rows on one padded engine (a replica's view, no Ray), three ways: the
              prefix read from one copy by cascade attention (the default where the model allows
              it), the prefix copied into each row's cache, and no sharing; the texts compared
  plain       bench.py's own CPU workload (no shared prefixes) through the padded engine, sharing
              on vs off (after one untimed run: on, off, off, on, mean of each): the cost of looking for prefixes where
              there are none
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from pathlib import Path

import bench

SIZES = {
    # the workload: 256 rows, a 1,024-token system prompt, 16-128-token questions, 32-64 new
    # tokens; 200 four-choice questions over a 512-token few-shot block; bench.py's plain CPU workload
    "full": dict(
        rows=256, system=1024, question=(16, 128), new=(32, 64), questions=200, shots=512, plain=112
    ),
    # the same shapes with half the rows and questions: each part ~10 minutes on 2 shared CPU cores
    "cpu": dict(rows=128, system=1024, question=(16, 128), new=(32, 64), questions=100, shots=512, plain=112),
    "quick": dict(rows=32, system=256, question=(16, 64), new=(8, 16), questions=24, shots=128, plain=24),
}


def stream(tokenizer, rng: random.Random, tokens: int) -> str:
    """Text of about `tokens` tokens of the bench's random word stream."""
    ids = tokenizer(" ".join(rng.choice(bench.WORDS) for _ in range(2 * tokens)))["input_ids"]
    return tokenizer.decode(ids[: tokens - 1], skip_special_tokens=True)


def generation_rows(tokenizer, size: dict, seed: int) -> list[dict]:
    rng = random.Random(seed)
    system = "System: " + stream(tokenizer, rng, size["system"]) + "\nQuestion: "
    return [
        {
            "id": f"{i:05d}",
            "prompt": system + stream(tokenizer, rng, rng.randint(*size["question"])),
            "limit": rng.randint(*size["new"]),
        }
        for i in range(size["rows"])
    ]


def score_requests(engine, size: dict, seed: int) -> list:
    from runner.engine.scoring import ScoreRequest

    rng = random.Random(seed)
    tok = engine.tokenizer
    shots = stream(tok, rng, size["shots"])
    requests = []
    for q in range(size["questions"]):
        context = tok(f"{shots}\nQuestion: {stream(tok, rng, rng.randint(16, 48))}\nAnswer:")["input_ids"]
        for k in range(4):
            choice = tok(" " + stream(tok, rng, rng.randint(2, 12)), add_special_tokens=False)["input_ids"]
            requests.append(ScoreRequest(f"q{q}#{k}", context, choice or [tok.eos_token_id]))
    return requests


def run_generation(model_cfg, rows: list[dict], sharing: bool) -> dict:
    """The full job (bench.run_ray_job), padded, with or without prefix sharing."""
    batching = {"strategy": "padded", "prefix_sharing": sharing}
    with tempfile.TemporaryDirectory() as tmp:
        result = bench.run_ray_job(model_cfg, rows, batching, Path(tmp))
    return {
        "wall_s": result.wall_s,
        "tok": result.useful_tokens,
        "texts": result.texts,
        "reused": result.reused,
    }


def run_engine_ways(model_cfg, rows: list[dict]) -> dict[str, dict]:
    """The rows on one padded engine: cascade attention, the per-row copy of the prefix, no sharing."""
    from runner.engine import cascade

    ways, allowed = {}, cascade.unsupported
    for way in ("cascade", "copy", "off"):
        # The copy path is what a model cascade attention cannot run gets: forced here to measure it.
        cascade.unsupported = allowed if way == "cascade" else (lambda model, arch: "forced by the benchmark")
        try:
            result = bench.run_engine("padded", model_cfg, rows, {"prefix_sharing": way != "off"})
        finally:
            cascade.unsupported = allowed
        ways[way] = {
            "wall_s": result.wall_s,
            "tok": result.useful_tokens,
            "texts": result.texts,
            "reused": None,
        }
        print(way, round(result.wall_s, 1), file=sys.stderr, flush=True)
    return ways


def run_eval(model_cfg, size: dict, seed: int, sharing: bool) -> dict:
    from runner.config import BatchingConfig, SamplingConfig
    from runner.engine import Engine

    engine = Engine(model_cfg, SamplingConfig(), BatchingConfig(strategy="padded", prefix_sharing=sharing))
    requests = score_requests(engine, size, seed)
    start = time.perf_counter()
    results = engine.score(requests)
    wall = time.perf_counter() - start
    reused = engine.scorer.prefix_tokens_reused
    engine.close()
    tokens = sum(r.length for r in requests)
    return {"wall_s": wall, "tok": tokens, "logprobs": [r.logprob for r in results], "reused": reused}


def run_plain(model_cfg, size: dict, seed: int, sharing: bool) -> dict:
    mode = dict(bench.MODES["cpu"])
    rows = bench.make_rows(_tokenizer(model_cfg), mode, size["plain"], seed)
    result = bench.run_engine(
        "padded", model_cfg, rows, {"max_batch_size": mode["rows"], "prefix_sharing": sharing}
    )
    print(f"plain, sharing {'on' if sharing else 'off'}: {result.wall_s:.1f} s", file=sys.stderr, flush=True)
    return {"wall_s": result.wall_s, "tok": result.useful_tokens, "texts": result.texts, "reused": None}


def _mean(runs: list[dict], order: tuple, way: bool) -> dict:
    """One contender's runs as one: the mean wall time (their texts and tokens are the same)."""
    mine = [r for r, w in zip(runs, order, strict=True) if w == way]
    return {**mine[0], "wall_s": sum(r["wall_s"] for r in mine) / len(mine)}


def _tokenizer(model_cfg):
    from runner.engine.loading import load_tokenizer

    return load_tokenizer(model_cfg)


def compare(name: str, on: dict, off: dict, unit: str) -> dict:
    """One table row: throughput with and without sharing, their ratio, and whether results agree."""
    if "texts" in on:
        same = sum(a == b for a, b in zip(on["texts"], off["texts"], strict=True)) / len(on["texts"])
        agree = f"same text {same:.3f}"
    else:
        worst = max(abs(a - b) for a, b in zip(on["logprobs"], off["logprobs"], strict=True))
        agree = f"max |d logprob| {worst:.1e}"
    return {
        "workload": name,
        "counted": unit,
        "shared tok/s": round(on["tok"] / on["wall_s"], 1),
        "unshared tok/s": round(off["tok"] / off["wall_s"], 1),
        "speed-up": round(off["wall_s"] / on["wall_s"], 2),
        "shared wall s": round(on["wall_s"], 1),
        "unshared wall s": round(off["wall_s"], 1),
        "prefix tokens reused": on["reused"] if on["reused"] is not None else "n/a",
        "agreement": agree,
    }


def main(size_name: str, seed: int, parts: list[str]) -> list[dict]:
    """Run the chosen parts (generation, eval, plain), sharing on then off, and return the table."""
    from runner.config import ModelConfig

    size = SIZES[size_name]
    model_cfg = ModelConfig(path="demo:small-llama", dtype="float32")
    # The first engine of a process pays one-time costs (kernel set-up, allocator growth): not in a contender.
    warm = bench.make_rows(_tokenizer(model_cfg), dict(bench.MODES["cpu"]), 4, seed)
    bench.run_engine("padded", model_cfg, warm, {})
    table = []
    if "generation" in parts:
        rows = generation_rows(_tokenizer(model_cfg), size, seed)
        runs = [run_generation(model_cfg, rows, sharing) for sharing in (True, False)]
        table.append(compare("generation (runner run)", *runs, "useful"))
        print(table[-1], file=sys.stderr, flush=True)
    if "eval" in parts:
        runs = [run_eval(model_cfg, size, seed, sharing) for sharing in (True, False)]
        table.append(compare("eval (Engine.score)", *runs, "scored"))
        print(table[-1], file=sys.stderr, flush=True)
    if "engine" in parts:
        ways = run_engine_ways(model_cfg, generation_rows(_tokenizer(model_cfg), size, seed))
        table.append(
            compare("generation (padded engine): cascade vs none", ways["cascade"], ways["off"], "useful")
        )
        table.append(compare("generation (padded engine): copy vs none", ways["copy"], ways["off"], "useful"))
        table.append(
            compare("generation (padded engine): cascade vs copy", ways["cascade"], ways["copy"], "useful")
        )
        print(table[-3:], file=sys.stderr, flush=True)
    if "plain" in parts:
        # The two differ by little, and the first big run of these rows is the slower (measured, in
        # this order: on/off 39.7/24.4 s; on/off/off/on 30.3/27.1/25.4/23.9 s): one untimed run, then
        # on, off, off, on and each one's mean, so neither pays the order.
        run_plain(model_cfg, size, seed, False)
        order = (True, False, False, True)
        runs = [run_plain(model_cfg, size, seed, sharing) for sharing in order]
        table.append(
            compare("plain (padded engine)", *(_mean(runs, order, way) for way in (True, False)), "useful")
        )
        print(table[-1], file=sys.stderr, flush=True)
    return table
