"""One writer per output directory: the lease, unique temp names, no-replace commits, timed flushes."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from runner.errors import OutputError
from runner.io import outputs
from runner.io.durable import filesystem
from runner.io.jobdir import JobDir
from runner.io.lease import Lease, LeaseLost, lease_name
from tests.conftest import PROMPTS, write_jsonl

REPO = Path(__file__).resolve().parents[1]


def lease(path: Path, **kw) -> Lease:
    return Lease(pafs.LocalFileSystem(), str(path), **kw)


def result_table(start: int, count: int) -> pa.Table:
    ids = [f"{i:08d}" for i in range(start, start + count)]
    return pa.table({"id": ids, "generation": [f"g{i}" for i in range(count)], "error": [None] * count})


LEASE_KEYS = {"host", "pid", "started", "heartbeat", "token", "generation", "boot_id", "pid_ns", "released"}


def test_a_second_lease_is_refused_naming_the_holder_and_released_leases_are_free(tmp_path):
    first = lease(tmp_path / "out").acquire()
    held = json.loads((tmp_path / "out" / lease_name(1)).read_text())
    assert LEASE_KEYS <= set(held) and held["generation"] == 1 and held["pid_ns"].startswith("pid:[")
    with pytest.raises(OutputError, match=rf"is in use by another run \(host .+ pid {os.getpid()}, started"):
        lease(tmp_path / "out").acquire()
    first.release()
    assert json.loads((tmp_path / "out" / lease_name(1)).read_text())["released"] is True
    second = lease(tmp_path / "out").acquire()  # the next generation; the superseded file goes
    assert second.generation == 2 and sorted(os.listdir(tmp_path / "out")) == [lease_name(2)]
    second.release()


def test_an_earlier_versions_lease_is_honoured_while_it_beats(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    old = {"host": "gpu-node-7", "pid": 4242, "started": 0, "heartbeat": time.time(), "token": "abc"}
    (out / "_lease.json").write_text(json.dumps(old))
    with pytest.raises(OutputError, match="host gpu-node-7 pid 4242"):
        lease(out, timeout_s=30).acquire()
    os.utime(out / "_lease.json", (0, 0))
    (out / "_lease.json").write_text(json.dumps({**old, "heartbeat": time.time() - 31}))
    os.utime(out / "_lease.json", (time.time() - 31,) * 2)
    lease(out, timeout_s=30).acquire().release()
    assert not (out / "_lease.json").exists()


def test_two_drivers_that_saw_one_stale_lease_take_it_over_once(tmp_path):
    """The takeover is a compare-and-swap on the generation: of two drivers that read generation 4
    stale, only one creates generation 5; the other looks again, finds it live and is refused."""
    out = tmp_path / "out"
    out.mkdir()
    stale = {"host": "gpu-node-7", "pid": 1, "started": 0, "heartbeat": 0, "token": "d" * 32, "generation": 4}
    (out / lease_name(4)).write_text(json.dumps(stale))
    os.utime(out / lease_name(4), (0, 0))
    a, b = lease(out, timeout_s=30), lease(out, timeout_s=30)
    seen = a.current()  # both read generation 4 ...
    assert seen.generation == 4 and not seen.live(time.time(), 30)
    assert a._create(5, a._holder(5, [])) and not b._create(5, b._holder(5, []))  # ... one creates 5
    a.generation = 5
    with pytest.raises(OutputError, match=f"pid {os.getpid()}"):
        b.acquire()  # b starts over and meets a's live lease
    a.check()


HOLD = """
import sys, time, pyarrow.fs as pafs
from runner.io.lease import Lease
Lease(pafs.LocalFileSystem(), sys.argv[1], timeout_s=3, heartbeat_s=0.2).acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_the_lease_of_a_killed_driver_is_taken_over_and_the_takeover_logged(tmp_path, caplog):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, env=env)
    try:
        assert holder.stdout.readline().strip() == b"held"
        with pytest.raises(OutputError, match=f"pid {holder.pid}"):  # alive and beating: refused
            lease(out, timeout_s=3).acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        # Same host, process gone: no need to wait out the heartbeat timeout.
        with caplog.at_level(logging.WARNING, logger="runner.io.lease"):
            mine = lease(out, timeout_s=60).acquire()
        assert f"pid {holder.pid}" in caplog.text and "took over" in caplog.text
        assert json.loads((out / lease_name(mine.generation)).read_text())["pid"] == os.getpid()
        mine.release()
    finally:
        holder.kill()
        holder.wait()


def test_a_lease_from_another_host_is_taken_over_only_after_its_heartbeat_timeout(tmp_path, caplog):
    out = tmp_path / "out"
    out.mkdir()
    now = time.time()
    other = {"host": "gpu-node-7", "pid": 4242, "started": now - 100, "token": "abc", "generation": 1}
    (out / lease_name(1)).write_text(json.dumps({**other, "heartbeat": now - 1}))
    with pytest.raises(OutputError, match="host gpu-node-7 pid 4242"):
        lease(out, timeout_s=30).acquire()
    (out / lease_name(1)).write_text(json.dumps({**other, "heartbeat": now - 31}))  # a lost node
    os.utime(out / lease_name(1), (now - 31, now - 31))
    with caplog.at_level(logging.WARNING, logger="runner.io.lease"):
        lease(out, timeout_s=30).acquire().release()
    assert "took over the lease" in caplog.text and "gpu-node-7" in caplog.text


def test_a_driver_whose_lease_was_taken_over_stops_committing(tmp_path):
    out = tmp_path / "out"
    frozen = lease(out, timeout_s=3, heartbeat_s=0.2).acquire()
    frozen._stop.set()  # as a driver frozen past the timeout: no more heartbeats
    frozen._thread.join()
    time.sleep(3.2)
    new = lease(out, timeout_s=3).acquire()
    # No heartbeat has told the frozen driver: the commit itself reads the lease.
    writer = outputs.PartWriter(*filesystem(str(out)), 2, fence=frozen.check, generation=frozen.generation)
    with pytest.raises(LeaseLost, match="taken over"):
        writer.write(result_table(0, 2))
    assert not JobDir(str(out)).catalogue.numbers()
    new.release()


def test_a_part_linked_after_the_lease_was_lost_is_undone_and_never_counts(tmp_path):
    """The fence's check passes, then the lease moves before the link: the commit is undone. Had the
    writer died before undoing it, the part would still not count: not sealed, an old generation."""
    out = tmp_path / "out"
    old = JobDir(str(out)).lease(timeout_s=3, heartbeat_s=1).acquire()
    with old.writer(2) as writer:
        writer.write(result_table(0, 2))  # committed under generation 1
    takeover = {}

    def check_then_lose():
        old.fence()  # passes ...
        if not takeover:  # ... then the lease moves on, once
            old._lease._stop.set()
            held = json.loads((out / lease_name(1)).read_text())
            (out / lease_name(1)).write_text(json.dumps({**held, "heartbeat": 0}))  # as if frozen long
            os.utime(out / lease_name(1), (0, 0))
            takeover["dir"] = JobDir(str(out)).lease(timeout_s=3).acquire()

    zombie = outputs.PartWriter(*filesystem(str(out)), 2, fence=check_then_lose, generation=1)
    with pytest.raises(LeaseLost):
        zombie.write(result_table(2, 2))
    assert sorted(p.name for p in out.glob("part-*")) == ["part-00000.parquet"]
    # A part a generation-1 writer linked and never undid (it died): present, but it does not count.
    late = outputs.PartWriter(*filesystem(str(out)), 2, generation=1)
    late.write(result_table(2, 2))
    new = takeover["dir"]
    assert new.catalogue.zombies() == [1] and sorted(new.done_ids().to_pylist()) == ["00000000", "00000001"]
    assert new.sweep() == ["part-00001.parquet"] and new.catalogue.counts() == (2, 0)
    new.release()


def test_commits_never_replace_a_part_and_temp_names_are_unique(tmp_path):
    out = str(tmp_path)
    a, b = (
        outputs.PartWriter(*filesystem(out), 2),
        outputs.PartWriter(*filesystem(out), 2),
    )  # both start at part-00000
    a.write(result_table(0, 2))
    b.write(result_table(2, 2))
    names = sorted(os.listdir(tmp_path))
    assert names == ["part-00000.parquet", "part-00001.parquet"]
    ids = sorted(JobDir(out).done_ids().to_pylist())
    assert ids == [f"{i:08d}" for i in range(4)]
    assert JobDir(out).catalogue.distinct_ids() == 4


def test_buffered_rows_are_committed_after_flush_seconds_not_rows_per_file(tmp_path):
    writer = outputs.PartWriter(*filesystem(str(tmp_path)), 1000, flush_seconds=0.3)
    writer.write(result_table(0, 3))
    writer.flush_due()
    assert not JobDir(str(tmp_path)).catalogue.numbers()  # younger than flush_seconds
    time.sleep(0.35)
    writer.flush_due()  # what the job's timer thread calls while it waits for the next batch
    assert pq.read_table(tmp_path / "part-00000.parquet").num_rows == 3
    writer.write(result_table(3, 2))
    time.sleep(0.35)
    writer.write(result_table(5, 1))  # a write checks the age too
    assert sorted(os.listdir(tmp_path)) == ["part-00000.parquet", "part-00001.parquet"]


@pytest.mark.slow
def test_two_real_drivers_on_one_directory_one_runs_the_other_exits_2(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"{PROMPTS[i % 4]} {i}"} for i in range(16)])
    config = {
        "model": {"path": "demo:tiny-llama", "dtype": "float32"},
        "data": {"source": str(source)},
        "sampling": {"max_new_tokens": 4},
        "placement": {"replicas": 1},
        "output": {"path": str(tmp_path / "out"), "rows_per_file": 4},
        "ray": {"num_cpus": 2, "num_gpus": 0},
    }
    (tmp_path / "job.yaml").write_text(json.dumps(config))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "runner", "run", str(tmp_path / "job.yaml")]
    drivers = [subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(d.wait(timeout=240), d.stderr.read()) for d in drivers]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    # Whichever check the loser hit (a live lease, or one taken while it was taking it), the same line.
    assert "error: output.path:" in refused and "is in use by another run" in refused and "(host" in refused
    table = pq.read_table(tmp_path / "out", columns=["id"])
    assert table.num_rows == 16 and len(set(table.column("id").to_pylist())) == 16
    summary = json.loads((tmp_path / "out" / "_job.json").read_text())
    assert summary["output_ids_distinct"] == 16 and summary["status"] == "done"
    leases = list((tmp_path / "out").glob("_lease.*.json"))
    assert len(leases) == 1 and json.loads(leases[0].read_text())["released"] is True


def test_without_exclusive_create_the_lease_is_written_then_read_back(tmp_path):
    """The object-store path (no link, no O_EXCL), on a filesystem that is not pyarrow's LocalFileSystem."""
    fs = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    first = Lease(fs, "out", timeout_s=3, heartbeat_s=0.2).acquire()
    with pytest.raises(OutputError, match="is in use by another run"):
        Lease(fs, "out", timeout_s=3).acquire()
    first._beat_once()  # the heartbeat rewrites its own file there: no mtime to touch
    first.check()
    first.release()
    second = Lease(fs, "out", timeout_s=3).acquire()
    assert second.generation == 2 and sorted(os.listdir(tmp_path / "out")) == [lease_name(2)]
    second.release()


def test_output_of_an_earlier_version_resumes_and_counts_whole(tmp_path):
    """Parts without a lease generation and a stale `_lease.json`: all count, and stay counted once a
    new lease seals them."""
    out = tmp_path / "out"
    with outputs.PartWriter(*filesystem(str(out)), 2) as writer:  # as earlier versions wrote them
        writer.write(result_table(0, 3))
    old = {"host": "gpu-node-7", "pid": 1, "started": 0, "heartbeat": 0, "token": "abc"}
    (out / "_lease.json").write_text(json.dumps(old))
    os.utime(out / "_lease.json", (0, 0))
    job_dir = JobDir(str(out)).lease(timeout_s=30).acquire()
    assert not (out / "_lease.json").exists()
    assert sorted(job_dir.done_ids().to_pylist()) == [f"{i:08d}" for i in range(3)]
    with job_dir.writer(2) as writer:
        writer.write(result_table(3, 2))
    assert job_dir.catalogue.counts() == (5, 0) and job_dir.catalogue.zombies() == []
    job_dir.release()
    assert JobDir(str(out)).catalogue.distinct_ids() == 5


def test_a_taker_judges_a_lease_by_its_holders_timeout_never_its_own(tmp_path):
    """The lease records its holder's timeout and heartbeat interval: a holder beating every 10 s
    with a 120 s timeout is live 9 s after its last beat, for a taker started with a 3 s timeout too;
    past its own 120 s it is taken over, for a taker with a longer one too."""
    out = tmp_path / "out"
    holder = lease(out, timeout_s=120, heartbeat_s=10).acquire()
    file = out / lease_name(1)
    recorded = json.loads(file.read_text())
    assert (recorded["timeout_s"], recorded["heartbeat_s"]) == (120, 10)
    holder._stop.set()  # its beats are set by hand from here on
    holder._thread.join()

    def last_beat(seconds_ago: float) -> None:
        then = time.time() - seconds_ago
        file.write_text(json.dumps({**recorded, "heartbeat": then}))
        os.utime(file, (then, then))

    last_beat(9)
    with pytest.raises(OutputError, match=r"last heartbeat 9s ago, lease timeout 120s"):
        lease(out, timeout_s=3).acquire()
    holder.check()  # still the holder
    last_beat(121)
    taker = lease(out, timeout_s=600).acquire()
    assert taker.generation == 2
    with pytest.raises(LeaseLost):
        holder.check()
    taker.release()


def test_a_signal_while_the_lease_is_taken_leaves_it_released(tmp_path):
    """Ctrl-C or a scheduler's SIGTERM right after the lease file is created: the lease is released on
    the way out, so the next run takes it at once (on another host it would wait out the timeout)."""
    out = tmp_path / "out"
    taker = lease(out)

    def interrupted(generation: int) -> None:
        raise KeyboardInterrupt

    taker._tidy = interrupted  # the step right after the create
    with pytest.raises(KeyboardInterrupt):
        taker.acquire()
    assert json.loads((out / lease_name(1)).read_text())["released"] is True
    lease(out, timeout_s=600).acquire().release()


def test_a_commit_whose_temp_file_was_removed_while_the_lease_stayed_ours_is_written_again(tmp_path):
    """A superseded driver that froze while taking the lease and then removed the temp files (as a
    taker does) must not fail the holder's commit: the lease is still the holder's, so it writes again."""
    out = tmp_path / "out"
    holder = JobDir(str(out)).lease(timeout_s=30).acquire()
    writes = []

    def write(temp: str) -> None:
        Path(temp).write_text("{}")
        writes.append(temp)
        if len(writes) == 1:
            outputs.remove_temp_files(holder.fs, holder.root)  # the stale cleanup lands here

    from runner.io.durable import atomic_write

    assert atomic_write(holder.fs, holder.root, "_job.json", write, fence=holder.fence)
    assert len(writes) == 2 and (out / "_job.json").read_text() == "{}"
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    holder.release()
