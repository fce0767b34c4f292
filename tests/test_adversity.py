"""Nothing lost, nothing twice, under adversity: racing drivers, frozen holders, other pid namespaces.

The drivers are separate processes running `tests/lease_driver.py`: the real lease and the real
output-directory commit code (`runner.io.jobdir.JobDir`, what `runner.orchestration.job.Job` uses) with a tiny
deterministic row producer in place of a model on Ray. Eight Ray jobs would each start a Ray
instance and load a model (a minute each on this 2-core machine), so they could never start within
the same millisecond; these start together (`--start-at`) and race for the lease for real, twenty
times in seconds. Freezes are SIGSTOPs at exact points (the driver stops itself there), bounded by
short lease timeouts.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.slow  # many real drivers racing for one directory

REPO = Path(__file__).resolve().parents[1]
DRIVER = [sys.executable, str(REPO / "tests" / "lease_driver.py")]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
TIMEOUT = 1.5  # lease timeout of the frozen-holder tests: a takeover is possible 1.5 s after a freeze
ROWS = 12


def start(out: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([*DRIVER, str(out), str(ROWS), *args], env=ENV, stdout=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def wait_frozen(proc: subprocess.Popen, point: str) -> None:
    """Until the driver has stopped itself at `point`."""
    assert proc.stdout.readline().strip() == f"frozen {point}"
    deadline = time.monotonic() + 10
    while _state(proc.pid) != "T":
        assert time.monotonic() < deadline, "the driver did not stop"
        time.sleep(0.01)


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


def snapshot(out: Path) -> dict[str, tuple[int, str]]:
    """Every file of the directory: its mtime and content hash."""
    return {p.name: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest()) for p in out.iterdir()}


def assert_every_row_once(out: Path) -> None:
    rows = pq.read_table(out).to_pylist()
    assert sorted(r["id"] for r in rows) == [f"{i:08d}" for i in range(ROWS)], "every row once"
    for row in rows:  # each row's generation was made from its own prompt
        assert (
            row["generation"] == f"made from {row['prompt']}" and row["prompt"] == f"prompt {int(row['id'])}"
        )
    assert json.loads((out / "_job.json").read_text())["status"] == "done"


def test_eight_drivers_started_at_once_exactly_one_runs_each_round(tmp_path):
    """20 rounds of 8 driver processes on one directory each, started within a millisecond of each
    other (each process races all 20 rounds: imports take seconds, a race must not); odd rounds race
    to take over a stale lease (its holder's node was lost), even rounds race to create the first.
    The winner holds the lease until all eight have tried (`--wait-for`): a driver the machine
    schedules late still meets a held lease, so the result does not depend on timing."""
    rounds, interval = 20, 1.0
    for r in range(rounds):
        out = tmp_path / f"round-{r}"
        out.mkdir()
        if r % 2:
            stale = {"host": "lost-node", "pid": 7, "started": 0, "heartbeat": 0, "token": "f" * 32}
            (out / "_lease.000003.json").write_text(json.dumps({**stale, "generation": 3}))
            os.utime(out / "_lease.000003.json", (0, 0))
    at = str(time.time() + 4.0)  # after every driver's imports
    args = ["--rounds", str(rounds), "--interval", str(interval), "--start-at", at, "--wait-for", "8"]
    drivers = [start(tmp_path, *args, "--timeout", "30") for _ in range(8)]
    outputs = [finish(d, timeout=120)[1] for d in drivers]
    for r in range(rounds):
        codes = sorted(
            int(line.split(": ")[1])
            for text in outputs
            for line in text.splitlines()
            if line.startswith(f"round {r}:")
        )
        lines = [line for text in outputs for line in text.splitlines() if f"round-{r} " in line]
        assert codes == [0] + [2] * 7, f"round {r}: exit codes {codes}; {lines}"
        assert_every_row_once(tmp_path / f"round-{r}")
    assert sum(text.count("is in use by another run") for text in outputs) == 7 * rounds


def run_with_frozen_holder(out: Path, point: str) -> tuple[int, str]:
    """A holds the directory and stops at `point`; once its lease is stale B takes over and finishes;
    then A resumes. Returns A's exit code and output, after checking A wrote nothing more."""
    # Generation outlasts the first heartbeat (0.25 s), so a heartbeat freezes a driver with work left.
    first = start(out, "--freeze", point, "--timeout", str(TIMEOUT), "--work", "0.1")
    try:
        wait_frozen(first, point)
        time.sleep(TIMEOUT + 0.3)
        code, text = finish(start(out, "--timeout", str(TIMEOUT)))
        assert code == 0, text
        before = snapshot(out)
        os.kill(first.pid, signal.SIGCONT)
        code, text = finish(first)
        time.sleep(TIMEOUT / 3)  # a heartbeat of A's, had it survived, would have landed by now
        assert snapshot(out) == before, "the superseded driver wrote nothing: no part, no _job.json, no lease"
        return code, text
    finally:
        first.kill()
        first.wait()


@pytest.mark.parametrize("point", ["generating", "commit", "summary", "heartbeat"])
def test_a_holder_frozen_past_the_timeout_writes_nothing_after_a_takeover(tmp_path, point):
    """Frozen while generating, between its lease check and a part commit, between its check and the
    final `_job.json`, inside a heartbeat: the takeover wins, the old holder stops (exit 1)."""
    out = tmp_path / "out"
    code, text = run_with_frozen_holder(out, point)
    assert code == 1 and text.strip().endswith("lost"), text
    assert_every_row_once(out)


def test_a_lease_is_never_seen_half_made(tmp_path):
    """A driver stopped just after its lease file's name exists: the file is already complete, so a
    second driver finds a live holder and is refused (an empty lease would be taken over)."""
    out = tmp_path / "out"
    first = start(out, "--freeze", "create", "--timeout", "30")
    try:
        wait_frozen(first, "create")
        code, text = finish(start(out, "--timeout", "30"))
        assert code == 2 and "is in use by another run" in text, text
        os.kill(first.pid, signal.SIGCONT)
        assert finish(first)[0] == 0
    finally:
        first.kill()
        first.wait()
    assert_every_row_once(out)


HOLD = """
import sys, time, pyarrow.fs as pafs
from runner.io.lease import Lease
Lease(pafs.LocalFileSystem(), sys.argv[1], timeout_s=3, heartbeat_s=0.2).acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_a_live_holder_in_another_pid_namespace_on_this_host_is_not_taken_over(tmp_path):
    """A container with host networking: same host name, other pid namespace. Its pid (3999991 there)
    means nothing here, so only its heartbeat counts: it is alive."""
    import pyarrow.fs as pafs

    from runner.errors import OutputError
    from runner.io.lease import Lease

    out = tmp_path / "out"
    # The namespace's next pid is set so the holder's pid exists nowhere outside it.
    inner = f"echo 3999990 > /proc/sys/kernel/ns_last_pid; {sys.executable} -c '{HOLD}' {out}; true"
    try:
        holder = subprocess.Popen(
            ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--kill-child", "--mount-proc"]
            + ["sh", "-c", inner],
            env=ENV,
            stdout=subprocess.PIPE,
        )
    except FileNotFoundError:
        pytest.skip("no unshare(1) here")
    try:
        if holder.stdout.readline().strip() != b"held":
            pytest.skip("this machine does not let an unprivileged user make a pid namespace")
        with pytest.raises(OutputError, match="pid 3999991"):
            Lease(pafs.LocalFileSystem(), str(out), timeout_s=3).acquire()
    finally:
        holder.kill()
        holder.wait()


def test_rows_sharing_an_id_in_one_batch_never_get_each_others_generation(tiny_model):
    """The stage keys results by each row's own request: the first row with an id generates, every
    later one is an error row naming the id (earlier, IndexError: the whole batch failed)."""
    import pyarrow as pa

    from jobs.generate.stage import GenerationStage
    from runner.config import build_config

    cfg = build_config(
        {
            "model": {"path": tiny_model, "dtype": "float32"},
            "data": {"source": "unused.jsonl"},
            "sampling": {"max_new_tokens": 6},
            "batching": {"strategy": "padded"},
        }
    )
    stage = GenerationStage(cfg)
    prompts = ["Hello", "x", "What is the capital of France?", "東京 서울", "List five primes"]
    alone = {r["prompt"]: r for r in stage(pa.table({"id": list("vwxyz"), "prompt": prompts})).to_pylist()}
    out = stage(pa.table({"id": ["a", "b", "a", "b", "a"], "prompt": prompts})).to_pylist()
    assert [r["id"] for r in out] == ["a", "b", "a", "b", "a"] and [r["prompt"] for r in out] == prompts
    for row in out[:2]:  # the first row of each id: its own prompt's generation
        want = alone[row["prompt"]]
        assert (row["generation"], row["error"]) == (want["generation"], None)
        assert row["completion_tokens"] == want["completion_tokens"]
    for row in out[2:]:
        assert row["generation"] is None and row["error_kind"] == "row" and row["completion_tokens"] == 0
        assert row["error"].startswith(f"duplicate id {row['id']!r}")


def test_a_holder_frozen_inside_a_heartbeat_and_resumed_while_the_new_holder_runs_changes_nothing(tmp_path):
    """The heartbeat's write lands after a takeover, while the new holder is still at work: it must
    not touch the new holder's lease (which would stop the new holder, or let both write)."""
    out = tmp_path / "out"
    first = start(out, "--freeze", "heartbeat", "--timeout", str(TIMEOUT), "--work", "0.1")
    try:
        wait_frozen(first, "heartbeat")
        time.sleep(TIMEOUT + 0.3)
        second = start(out, "--timeout", str(TIMEOUT), "--work", "0.15")  # runs about 2 s
        deadline = time.monotonic() + 30
        while not list(out.glob("part-*.parquet")):  # the new holder is at work
            assert time.monotonic() < deadline and second.poll() is None
            time.sleep(0.01)
        os.kill(first.pid, signal.SIGCONT)
        assert finish(first)[0] == 1
        code, text = finish(second)
        assert code == 0, text
    finally:
        first.kill()
        first.wait()
    assert_every_row_once(out)
    assert json.loads((out / "_job.json").read_text())["pid"] == second.pid


COMMIT_POINTS = ["write", "written", "checked", "linked", "post-check"]


def assert_counts_as_read(out: Path) -> None:
    """`_job.json`'s counts are what a reader of the directory sees (pyarrow's discovery: every part)."""
    table = pq.read_table(out)
    ids = table.column("id").to_pylist()
    summary = json.loads((out / "_job.json").read_text())
    assert summary["status"] == "done"
    seen = {
        "output_rows": table.num_rows,
        "output_rows_error": table.num_rows - table.column("error").null_count,
        "output_ids_distinct": len(set(ids)),
    }
    assert {key: summary[key] for key in seen} == seen
    assert sorted(ids) == [f"{i:08d}" for i in range(ROWS)], "every id exactly once"


def takeover_while_frozen(out: Path, point: str, first_args: list[str], second_args: list[str]) -> None:
    """A stops itself at `point` of one part commit; once its lease is stale B takes over and finishes;
    then A resumes: it stops (exit 1) and changes nothing, whatever it had done before the freeze."""
    first = start(out, "--freeze", point, "--timeout", str(TIMEOUT), *first_args)
    try:
        wait_frozen(first, point)
        time.sleep(TIMEOUT + 0.3)
        code, text = finish(start(out, "--timeout", str(TIMEOUT), *second_args))
        assert code == 0, text
        before = snapshot(out)
        os.kill(first.pid, signal.SIGCONT)
        code, text = finish(first)
        assert code == 1 and text.strip().endswith("lost"), text
        assert snapshot(out) == before, "the superseded driver removed, replaced or added nothing"
    finally:
        first.kill()
        first.wait()
    assert_counts_as_read(out)


@pytest.mark.parametrize("point", COMMIT_POINTS)
def test_a_driver_frozen_at_any_point_of_a_part_commit_loses_no_row_to_a_takeover(tmp_path, point):
    """Frozen before its second part's temp write, after it, after the lease check, after the link
    (the part is visible: the takeover seals it and skips its rows, so it must stay), after the check
    that follows the link: every id once, and the summary counts what readers see."""
    out = tmp_path / "out"
    takeover_while_frozen(out, point, ["--work", "0.02"], [])
    assert_every_row_once(out)


@pytest.mark.parametrize("retry", [True, False], ids=["taker-retries", "taker-plain"])
@pytest.mark.parametrize("point", COMMIT_POINTS)
def test_a_driver_frozen_while_retry_errors_rewrites_a_part_loses_no_row(tmp_path, point, retry):
    """`--retry-errors` rewrites parts without their engine-error rows, then generates those rows again.
    Frozen at each point of its second rewrite while a driver (with or without `--retry-errors`)
    takes over and finishes: every id once, and the counts are what readers see."""
    out = tmp_path / "out"
    code, text = finish(start(out, "--timeout", str(TIMEOUT), "--fail", "1,5,6,9"))
    assert code == 0, text
    takeover_while_frozen(
        out, point, ["--retry-errors", "--freeze-commit", "1"], ["--retry-errors"] if retry else []
    )
    if retry:
        assert_every_row_once(out)


def test_a_driver_with_a_long_lease_is_not_evicted_by_a_taker_configured_with_a_short_one(tmp_path):
    """A beats every 5 s (its 30 s timeout); B, started with a 0.5 s timeout while A's last beat is
    older than that, judges A by A's own timeout: refused, and A finishes alone."""
    out = tmp_path / "out"
    first = start(out, "--timeout", "30", "--work", "0.05", "--hold", "8")
    try:
        deadline = time.monotonic() + 30
        while not (out / "part-00000.parquet").exists():
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.01)
        code, text = finish(start(out, "--timeout", "0.5"))
        assert code == 2 and "is in use by another run" in text and "lease timeout 30s" in text, text
        code, text = finish(first)
        assert code == 0, text
    finally:
        first.kill()
        first.wait()
    assert_every_row_once(out)
    assert json.loads((out / "_job.json").read_text())["pid"] == first.pid


def test_a_driver_frozen_in_overwrite_before_deleting_deletes_nothing_another_counts(tmp_path):
    """`--overwrite` first moves the lease to a generation that seals nothing, then deletes the parts
    below its own numbers: frozen in between while a plain driver takes over (which then counts none
    of the old parts and generates every row), the resumed driver deletes no part the new one wrote."""
    out = tmp_path / "out"
    code, text = finish(start(out, "--timeout", str(TIMEOUT)))
    assert code == 0, text
    takeover_while_frozen(out, "clear", ["--overwrite"], [])
    assert_every_row_once(out)
    assert json.loads((out / "_job.json").read_text())["generated"] == ROWS
