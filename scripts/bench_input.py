"""Input-side benchmark: driver peak memory and time to first row, streaming vs a full read.

Workload: N short prompts in one JSON Lines file (`{"prompt": "Question 123: ..."}`, ~115 bytes a
row), generated under --dir (default /tmp/bench-input; never commit them). Contenders, each in its own
process so its peak RSS (ru_maxrss) is its own:

  full-read         the reader that landed before (`runner.io.inputs.read_input`): the whole input as
                    one table on the driver. Time to first row = the read.
  stream            `runner.io.stream.open_input(...).dataset()` iterated on the driver through a
                    local Ray (2 CPUs): what a job does. Time to first row = first batch out, timed
                    from after `ray.init` (the job contender includes Ray's start-up).
  resume-set        resume as it landed: every committed id in a Python set, then an `is_in` filter
                    of the full table. The output holds N - 1000 committed ids.
  resume-stream     resume now: committed ids as one Arrow array in the object store, dropped inside
                    the read tasks; the driver pulls the 1000 remaining rows.
  job --limit       the real job (jobs.generate.run) on demo:tiny-llama over `data.limit` rows of the
                    same N-row file: time from start to the first committed batch, driver peak RSS.

Prints one table: contender, rows, driver peak RSS, time to first row, total time, ratio of peak
memory to the full-read baseline of the same N.

    python scripts/bench_input.py --rows 1000000 4000000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KEEP = 1000  # rows left to do in the resume contenders


def make_input(path: Path, rows: int) -> None:
    if path.exists():
        return
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as handle:
        for start in range(0, rows, 100_000):
            handle.write(
                "".join(
                    json.dumps({"prompt": f"Question {i}: what is {i % 97} plus {i % 89}? Answer briefly."})
                    + "\n"
                    for i in range(start, min(rows, start + 100_000))
                )
            )
    tmp.rename(path)


def make_output(path: Path, rows: int) -> None:
    """An output directory whose parts commit every id but the last KEEP (ids and errors only)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if path.exists():
        return
    path.mkdir(parents=True)
    done = rows - KEEP
    for number, start in enumerate(range(0, done, 1_000_000)):
        count = min(1_000_000, done - start)
        positions = pa.array(range(start, start + count), pa.int64()).cast(pa.string())
        ids = pc.utf8_lpad(positions, width=max(8, len(str(rows - 1))), padding="0")
        table = pa.table({"id": ids, "error": pa.nulls(count, pa.string())})
        pq.write_table(table, path / f"part-{number:05d}.parquet")


def measure(mode: str, source: str, out: str, limit: int) -> dict:
    """Run one contender in this process; return its figures."""
    from runner.config import DataConfig

    cfg = DataConfig(source=source)
    start = time.perf_counter()
    first = None
    rows = 0
    if mode == "full-read":
        from runner.io.inputs import read_input

        table = read_input(cfg)
        first = time.perf_counter() - start
        rows = table.num_rows
    elif mode == "resume-set":
        import pyarrow.compute as pc

        from runner.io.inputs import read_input
        from runner.io.jobdir import JobDir

        table = read_input(cfg)
        done = JobDir(out).done_ids()
        todo = table.filter(pc.invert(pc.is_in(table.column("id"), value_set=done)))
        first = time.perf_counter() - start
        rows = todo.num_rows
    elif mode in ("stream", "resume-stream"):
        import ray

        from runner.io.jobdir import JobDir
        from runner.io.stream import open_input

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
        start = time.perf_counter()  # Ray's start-up (seconds, whatever the input) is not the reader's
        done = JobDir(out).done_ids() if mode == "resume-stream" else None
        dataset = open_input(cfg).dataset(done, 256)
        del done
        for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
            first = first if first is not None else time.perf_counter() - start
            rows += batch.num_rows
    elif mode == "job":
        import tempfile

        from jobs.generate.job import run
        from runner.config import build_config

        cfg = build_config(
            {
                "model": {"path": "demo:tiny-llama", "dtype": "float32"},
                "data": {"source": source, "limit": limit},
                "sampling": {"max_new_tokens": 4},
                "batching": {"rows_per_task": 16},
                "placement": {"replicas": 1},
                "output": {"path": tempfile.mkdtemp(prefix="bench-job-"), "rows_per_file": 16},
                "ray": {"num_cpus": 2, "num_gpus": 0},
            }
        )
        from runner.io import outputs

        original = outputs.PartWriter.write

        def write(self, table):
            nonlocal first
            first = first if first is not None else time.perf_counter() - start
            return original(self, table)

        outputs.PartWriter.write = write
        summary = run(cfg)
        rows = summary["output_rows"]
    total = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": mode, "rows": rows, "peak_mb": peak_mb, "first_s": first, "total_s": total}


def run_child(mode: str, source: Path, out: Path, limit: int) -> dict:
    cmd = [sys.executable, __file__, "--measure", mode, str(source), str(out), str(limit)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        raise SystemExit(f"{mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 4_000_000])
    parser.add_argument("--dir", default="/tmp/bench-input")
    parser.add_argument("--limit", type=int, default=64, help="rows the `job` contender generates")
    parser.add_argument(
        "--modes", nargs="+", default=["full-read", "stream", "resume-set", "resume-stream", "job"]
    )
    parser.add_argument("--measure", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        mode, source, out, limit = args.measure
        print(json.dumps(measure(mode, source, out, int(limit))))
        return
    base = Path(args.dir)
    base.mkdir(parents=True, exist_ok=True)
    print(
        f"{'contender':<14} {'rows':>10} {'done':>10} {'peak MB':>9} {'vs full':>8} {'1st row s':>10} {'total s':>8}"
    )
    for rows in args.rows:
        source, out = base / f"prompts-{rows}.jsonl", base / f"out-{rows}"
        make_input(source, rows)
        make_output(out, rows)
        baseline = None
        for mode in args.modes:
            figures = run_child(mode, source, out, args.limit)
            if mode == "full-read":
                baseline = figures["peak_mb"]
            ratio = f"{figures['peak_mb'] / baseline:.2f}x" if baseline else "-"
            first = f"{figures['first_s']:.1f}" if figures["first_s"] is not None else "-"
            print(
                f"{mode:<14} {rows:>10} {figures['rows']:>10} {figures['peak_mb']:>9.0f} {ratio:>8} "
                f"{first:>10} {figures['total_s']:>8.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
