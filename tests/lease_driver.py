"""A small driver for the adversity tests: the real lease and output-directory commit code
(`runner.jobdir.JobDir`, as `runner.job.Job` uses it) with a tiny deterministic row producer instead
of a model on Ray, so eight of them start in well under a second and race for real.

    python tests/lease_driver.py OUT ROWS [--freeze POINT] [--start-at T] [--timeout S] ...
    python tests/lease_driver.py BASE ROWS --rounds 20 --start-at T --interval S ...

Rows are `{"id": "00000007", "prompt": "prompt 7", "generation": "made from prompt 7"}`. It takes the
directory's lease, writes a "running" summary, commits the rows not yet done in parts, writes a "done"
summary and releases the lease. Exit 0: it ran; 2: refused (the directory is in use); 1: its lease
was taken over. `--freeze POINT` stops this process (SIGSTOP, as a frozen VM or an NFS hang would)
the first time it reaches POINT, after printing `frozen POINT`:

- create: just after the lease file's name exists;
- generating: while producing rows, after its first part is committed;
- commit: after its lease check, before a part is linked into place;
- summary: after its lease check, before the final `_job.json` is renamed into place;
- heartbeat: inside a heartbeat, after its check, before it writes.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
import time

import pyarrow as pa

from runner.errors import OutputError
from runner.io.lease import Lease, LeaseLost
from runner.jobdir import JobDir

_frozen: set[str] = set()


def freeze(point: str) -> None:
    if point in _frozen:
        return
    _frozen.add(point)
    print(f"frozen {point}", flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)


def install(point: str | None) -> None:
    """Stop at `point`: wrappers around the filesystem calls the commit and lease code make."""
    real_link, real_replace, real_open = os.link, os.replace, os.open
    summaries = []

    def link(src, dst, *args, **kw):
        name = os.path.basename(dst)
        if point == "commit" and re.match(r"part-\d+\.parquet$", name):
            freeze(point)
        real_link(src, dst, *args, **kw)
        if point == "create" and re.match(r"_lease(\.\d+)?\.json$", name):
            freeze(point)

    def replace(src, dst, *args, **kw):
        if point == "summary" and os.path.basename(dst) == "_job.json":
            summaries.append(dst)
            if len(summaries) == 2:  # the first is the "running" summary, the second the final one
                freeze(point)
        return real_replace(src, dst, *args, **kw)

    def open_(path, flags, *args, **kw):  # a lease made by O_EXCL, then written (earlier versions)
        fd = real_open(path, flags, *args, **kw)
        if point == "create" and flags & os.O_EXCL and str(path).endswith("_lease.json"):
            freeze(point)
        return fd

    os.link, os.replace, os.open = link, replace, open_
    beat = "_touch" if hasattr(Lease, "_touch") else "_replace"  # the heartbeat's write, either version
    real_beat = getattr(Lease, beat)

    def beating(self, *args, **kw):
        if point == "heartbeat" and threading.current_thread().name == "output-lease":
            freeze(point)
        return real_beat(self, *args, **kw)

    setattr(Lease, beat, beating)


def rows(ids: list[int]) -> pa.Table:
    prompts = [f"prompt {i}" for i in ids]
    return pa.table(
        {
            "id": [f"{i:08d}" for i in ids],
            "prompt": prompts,
            "generation": [f"made from {p}" for p in prompts],
            "error": pa.nulls(len(ids), pa.string()),
        }
    )


def attempted(args) -> None:
    """`--wait-for N`: say this driver has tried the lease (a dot name: readers skip it)."""
    if args.wait_for:
        open(os.path.join(args.out, f".attempt-{os.getpid()}"), "w").close()


def wait_for_attempts(args) -> None:
    """`--wait-for N`: the winner holds the lease until all N drivers have tried it, so a driver the
    machine scheduled late still races a held lease, never a released one."""
    deadline = time.monotonic() + 60
    while args.wait_for and time.monotonic() < deadline:
        if sum(name.startswith(".attempt-") for name in os.listdir(args.out)) >= args.wait_for:
            return
        time.sleep(0.01)


def drive(args) -> int:
    out = JobDir(args.out)
    with out.lease(timeout_s=args.timeout, heartbeat_s=args.timeout / 6):
        out.prepare()
        out.write_summary({"status": "running", "pid": os.getpid()})
        done = set(out.done_ids().to_pylist())
        todo = [i for i in range(args.rows) if f"{i:08d}" not in done]
        writer = out.writer(args.rows_per_file)
        for n, i in enumerate(todo):
            time.sleep(args.work)  # the "generation" of one row
            if args.freeze == "generating" and n == args.rows_per_file:
                freeze("generating")
            writer.write(rows([i]))
        writer.close()
        time.sleep(args.hold)
        attempted(args)
        wait_for_attempts(args)
        if hasattr(out, "mark_duplicate_ids"):
            out.mark_duplicate_ids()
            out.sweep()
        out.write_summary({"status": "done", "pid": os.getpid(), "generated": len(todo)})
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("rows", type=int)
    parser.add_argument("--freeze")
    parser.add_argument("--start-at", type=float, default=0.0)
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--rows-per-file", type=int, default=4)
    parser.add_argument("--work", type=float, default=0.01)
    parser.add_argument("--hold", type=float, default=0.0)
    parser.add_argument("--rounds", type=int, default=0)
    parser.add_argument("--wait-for", type=int, default=0)
    parser.add_argument("--interval", type=float, default=1.5)
    args = parser.parse_args()
    install(args.freeze)
    if args.rounds:
        return race_rounds(args)
    time.sleep(max(0.0, args.start_at - time.time()))  # all drivers of a race start together
    return drive_once(args)


def drive_once(args) -> int:
    try:
        code = drive(args)
    except LeaseLost:
        print("lost", flush=True)
        return 1
    except OutputError as err:
        attempted(args)
        print(f"refused {err}", flush=True)
        return 2
    print("done", flush=True)
    return code


def race_rounds(args) -> int:
    """`--rounds N`: round r runs on OUT/round-r at START_AT + r * INTERVAL, so the racing processes
    start once (imports take seconds) and race N times; prints `round r: exit code` per round."""
    base = args.out
    for r in range(args.rounds):
        args.out = os.path.join(base, f"round-{r}")
        time.sleep(max(0.0, args.start_at + r * args.interval - time.time()))
        code = drive_once(args)
        print(f"round {r}: {code}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
