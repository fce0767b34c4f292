"""A small driver for the adversity tests: the real lease and output-directory commit code
(`runner.io.jobdir.JobDir`, as `runner.orchestration.job.Job` uses it) with a tiny deterministic row producer instead
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

and at each point of one part commit (the `--freeze-commit K`th Parquet file written, from 0; with
`--retry-errors` the first ones are the rewrites that drop the earlier runs' error rows):

- write: before its temp file is written;
- written: after the temp file is written, before the lease check;
- checked: after the lease check, before the link (or, for a rewrite, the rename);
- linked: after the link or rename, before the check that follows it;
- post-check: after that check.

and `--overwrite` removes the committed parts first (`JobDir.clear`); `--freeze clear` stops it after
its lease check, before it deletes anything.

`--fail ID,ID` makes those rows engine errors (`error_kind` engine), which `--retry-errors` generates
again. The "done" summary counts the committed rows as `runner.orchestration.job.Job`'s does.
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
import pyarrow.parquet as pq

from runner.errors import OutputError
from runner.io.catalogue import Catalogue
from runner.io.jobdir import JobDir
from runner.io.lease import Lease, LeaseLost

_frozen: set[str] = set()


def freeze(point: str) -> None:
    if point in _frozen:
        return
    _frozen.add(point)
    print(f"frozen {point}", flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)


_PART = re.compile(r"part-\d+\.parquet$")
_PART_TEMP = re.compile(r"\.part-\d+\.parquet\.[0-9a-f]+\.tmp$")


def install(point: str | None, at_commit: int = 1) -> None:
    """Stop at `point`: wrappers around the filesystem calls the commit and lease code make."""
    real_link, real_replace, real_open = os.link, os.replace, os.open
    summaries = []
    commit = {"n": -1, "moved": False}  # the part commit under way: its index, whether it is in place

    def at(name: str) -> bool:
        return point == name and commit["n"] == at_commit

    def write_table(table, where, *args, **kw):
        if isinstance(where, str) and _PART_TEMP.search(where):
            commit["n"], commit["moved"] = commit["n"] + 1, False
            if at("write"):
                freeze(point)
        real_write_table(table, where, *args, **kw)
        if isinstance(where, str) and _PART_TEMP.search(where) and at("written"):
            freeze(point)

    def move(real, src, dst, *args, **kw):
        part = bool(_PART.match(os.path.basename(dst)))
        if part and (point == "commit" or at("checked")):
            freeze(point)
        real(src, dst, *args, **kw)
        if part:
            commit["moved"] = True
            if at("linked"):
                freeze(point)

    def link(src, dst, *args, **kw):
        move(real_link, src, dst, *args, **kw)
        if point == "create" and re.match(r"_lease(\.\d+)?\.json$", os.path.basename(dst)):
            freeze(point)

    def replace(src, dst, *args, **kw):
        if point == "summary" and os.path.basename(dst) == "_job.json":
            summaries.append(dst)
            if len(summaries) == 2:  # the first is the "running" summary, the second the final one
                freeze(point)
        return move(real_replace, src, dst, *args, **kw)

    real_write_table, real_fence = pq.write_table, JobDir.fence

    def fence(self):
        real_fence(self)
        if commit["moved"] and at("post-check"):
            freeze(point)

    pq.write_table, JobDir.fence = write_table, fence
    real_remove = Catalogue.remove

    def remove(self, numbers):
        if point == "clear":
            freeze(point)
        return real_remove(self, numbers)

    Catalogue.remove = remove

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


def rows(ids: list[int], fail: frozenset = frozenset()) -> pa.Table:
    prompts = [f"prompt {i}" for i in ids]
    failed = [i in fail for i in ids]
    return pa.table(
        {
            "id": [f"{i:08d}" for i in ids],
            "prompt": prompts,
            "generation": [None if f else f"made from {p}" for f, p in zip(failed, prompts, strict=True)],
            "error": pa.array(["engine failed" if f else None for f in failed], pa.string()),
            "error_kind": pa.array(["engine" if f else None for f in failed], pa.string()),
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
        if args.overwrite:
            out.clear()
        out.write_summary({"status": "running", "pid": os.getpid()})
        if args.retry_errors:
            out.drop_retryable_errors()
        done = set(out.done_ids().to_pylist())
        todo = [i for i in range(args.rows) if f"{i:08d}" not in done]
        writer = out.writer(args.rows_per_file)
        for n, i in enumerate(todo):
            time.sleep(args.work)  # the "generation" of one row
            if args.freeze == "generating" and n == args.rows_per_file:
                freeze("generating")
            writer.write(rows([i], args.fail))
        writer.close()
        time.sleep(args.hold)
        attempted(args)
        wait_for_attempts(args)
        if hasattr(out, "mark_duplicate_ids"):
            out.mark_duplicate_ids()
            out.sweep()
        rows_, errors = out.catalogue.counts()
        counts = {
            "output_rows": rows_,
            "output_rows_error": errors,
            "output_ids_distinct": out.catalogue.distinct_ids(),
        }
        out.write_summary({"status": "done", "pid": os.getpid(), "generated": len(todo), **counts})
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
    parser.add_argument("--freeze-commit", type=int, default=1)
    parser.add_argument("--retry-errors", action="store_true")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument(
        "--fail", type=lambda text: frozenset(int(i) for i in text.split(",")), default=frozenset()
    )
    args = parser.parse_args()
    install(args.freeze, args.freeze_commit)
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
