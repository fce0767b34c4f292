"""Signals as schedulers send them: to the whole process group, during `ray.init`, twice. The job
stops within seconds, commits what is complete, says `interrupted`, releases its lease, exits 128 +
the signal with one line, shuts its local Ray down, and the same command resumes exactly. The local
Ray's processes live in process groups of their own (runner.compat.own_process_groups), so a signal
to the driver's group reaches the driver alone, which then stops Ray itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.orchestration.signals import Interrupted, StopSignals
from tests.test_resume import (  # noqa: F401 - fixtures
    ROWS,
    assert_complete_and_equal,
    cli,
    committed_state,
    job,
    oracle,
    out_dir,
    read_stderr,
    settings,
    source,
    start,
    stop_group,
    wait_for_first_part,
)

STOP_WITHIN_S = 15


RAY_GONE_WITHIN_S = 10


def process_table() -> dict[int, tuple[int, int]]:
    """Every live process: pid -> (parent pid, process group)."""
    found = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if entry.isdigit() and fields[0] != "Z":
            found[int(entry)] = (int(fields[1]), int(fields[2]))
    return found


def group_members(pgid: int) -> list[int]:
    """Pids of the processes in a process group."""
    return [pid for pid, (_, group) in process_table().items() if group == pgid]


def children(pid: int) -> list[int]:
    """Pids of the processes `pid` started itself."""
    return [child for child, (parent, _) in process_table().items() if parent == pid]


def names(pids: list[int]) -> list[str]:
    """The command names of those of `pids` still running."""
    found = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/comm") as comm:
                found.append(comm.read().strip())
        except OSError:
            pass
    return found


def descendants(pid: int) -> list[int]:
    """Pids of the processes `pid` started, and of those they started (the local Ray a driver started)."""
    found, parents = [], {pid}
    table = process_table()
    while parents:
        level = [child for child, (parent, _) in table.items() if parent in parents]
        found += level
        parents = set(level)
    return found


def snapshot(pids: list[int]) -> dict[int, int]:
    """pid -> process group of those of `pids` running now."""
    table = process_table()
    return {pid: table[pid][1] for pid in pids if pid in table}


def still_running(before: dict[int, int]) -> list[int]:
    """The processes of a `snapshot` still running (a pid reused since is in another group)."""
    table = process_table()
    return [pid for pid, pgid in before.items() if pid in table and table[pid][1] == pgid]


def assert_stopped(config: Path, proc: subprocess.Popen, signum: int, sent: float) -> None:
    """Exit 128 + signum within STOP_WITHIN_S of `sent`, one line saying so, the lease released."""
    try:
        code = proc.wait(timeout=STOP_WITHIN_S - (time.monotonic() - sent))
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {STOP_WITHIN_S}s after the signal: {read_stderr(config.parent)}")
    stderr = read_stderr(config.parent)
    assert code == 128 + signum, stderr
    name = signal.Signals(signum).name
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith(f"interrupted ({name}): output committed so far is kept"), stderr
    assert sum(line.startswith("interrupted") for line in lines) == 1 and "Traceback" not in stderr
    leases = list(out_dir(config).glob("_lease.*.json"))
    assert len(leases) == 1 and json.loads(leases[0].read_text())["released"] is True


def resume(config: Path, expected: dict) -> None:
    again = subprocess.run(cli(config), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert_complete_and_equal(out_dir(config), expected)


@pytest.mark.slow
def test_sigterm_to_the_process_group_mid_job_stops_within_seconds_and_resumes_exactly(job, oracle):  # noqa: F811
    """`kill -- -PGID`, a shell's job control: the signal reaches the driver alone (its local Ray is in
    groups of its own), which stops cleanly and then shuts that Ray down."""
    out = out_dir(job)
    proc = start(job)
    try:
        wait_for_first_part(proc, out)
        ray_processes = snapshot(children(proc.pid))
        assert ray_processes and group_members(proc.pid) == [proc.pid]
        os.killpg(proc.pid, signal.SIGTERM)
        assert_stopped(job, proc, signal.SIGTERM, time.monotonic())
        deadline = time.monotonic() + RAY_GONE_WITHIN_S
        while still_running(ray_processes) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not still_running(ray_processes), "the driver's local Ray outlived it"
    finally:
        stop_group(proc)
    committed, summary = committed_state(out)
    assert summary["status"] == "interrupted" and summary["output_rows"] == len(committed) < ROWS
    assert summary["rows_ok"] + summary["rows_error"] == len(committed)
    resume(job, oracle)


@pytest.mark.slow
def test_ctrl_c_twice_stops_once_with_the_summary_written_and_resumes_exactly(job, oracle):  # noqa: F811
    """The second Ctrl-C lands while the first one's stop path commits and writes the summary."""
    out = out_dir(job)
    proc = start(job)
    try:
        wait_for_first_part(proc, out)
        os.killpg(proc.pid, signal.SIGINT)
        sent = time.monotonic()
        time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        assert_stopped(job, proc, signal.SIGINT, sent)
    finally:
        stop_group(proc)
    committed, summary = committed_state(out)
    assert summary["status"] == "interrupted" and summary["output_rows"] == len(committed)
    resume(job, oracle)


@pytest.mark.slow
def test_sigterm_while_ray_starts_stops_with_exit_143_and_an_interrupted_summary(job):  # noqa: F811
    """Ray's own handler is in place during `ray.init` (a silent exit 15 before)."""
    out = out_dir(job)
    proc = start(job)
    try:
        deadline = time.monotonic() + 120
        while not children(proc.pid):  # Ray's first process started: ray.init is under way
            assert proc.poll() is None and time.monotonic() < deadline, read_stderr(job.parent)
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGTERM)
        assert_stopped(job, proc, signal.SIGTERM, time.monotonic())
    finally:
        stop_group(proc)
    summary = json.loads((out / "_job.json").read_text())
    assert summary["status"] == "interrupted" and summary["output_rows"] == 0
    assert not list(out.glob("part-*.parquet"))


def test_a_signal_whose_exception_was_swallowed_still_stops_the_run():
    """Python drops an exception raised by a handler that runs inside a callback whose exceptions it
    ignores (a fork's after-fork hooks): the signal is recorded all the same, and the run's next
    check raises it; inside a commit the check waits for the commit's end."""
    with StopSignals() as signals:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except Interrupted:
            pass  # what the ignoring callback does
        with signals.hold():
            signals.check()  # not inside a commit
        with pytest.raises(Interrupted) as stopped:
            signals.check()
        assert stopped.value.exit_code == 143


def test_a_second_signal_while_stopping_changes_nothing():
    """Only the first signal raises; one that lands while the stop path commits is logged, not raised
    (it used to skip the summary), and one inside a commit waits for the outermost commit to end."""
    steps = []
    with StopSignals() as signals:
        with pytest.raises(Interrupted) as first:
            with signals.hold():
                with signals.hold():
                    os.kill(os.getpid(), signal.SIGINT)
                steps.append("inner commit done")  # not raised at the inner hold's end
                os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C inside the commit
                steps.append("outer commit done")
        assert first.value.exit_code == 130
        with signals.hold():  # the stop path: commit the rest, write the summary
            os.kill(os.getpid(), signal.SIGINT)
            steps.append("summary written")
        os.kill(os.getpid(), signal.SIGTERM)  # outside any commit too
        steps.append("lease released")
        assert signals.received == signal.SIGINT
    assert steps == ["inner commit done", "outer commit done", "summary written", "lease released"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "moment",
    ["ray::DashboardA", "ray::IDLE", "ray::MapWorker("],
    ids=["ray-starting", "driver-connecting", "job-running"],
)
def test_a_group_signal_reaches_the_driver_alone_and_its_ray_ends_with_it(job, moment):  # noqa: F811
    """The local Ray the driver starts (GCS, raylet, agents, workers) runs in process groups of its own;
    after a SIGTERM to the driver's group, while Ray starts (its first agent is up), while `ray.init`
    connects the driver (Ray starts its first workers then) or once the replica runs, the driver stops
    as ever and none of those processes is left."""
    proc = start(job)
    try:
        deadline = time.monotonic() + 120
        while moment not in names(descendants(proc.pid)):
            assert proc.poll() is None and time.monotonic() < deadline, read_stderr(job.parent)
            time.sleep(0.01)
        ray = snapshot(descendants(proc.pid))
        assert group_members(proc.pid) == [proc.pid], names(list(ray))
        os.killpg(proc.pid, signal.SIGTERM)
        assert_stopped(job, proc, signal.SIGTERM, time.monotonic())
        deadline = time.monotonic() + RAY_GONE_WITHIN_S
        while still_running(ray) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not still_running(ray), names(still_running(ray))
    finally:
        stop_group(proc)


def test_a_stop_raised_where_python_drops_exceptions_is_raised_again():
    """A signal's handler can run in a finalizer, whose exceptions Python prints and drops: the stop is
    raised again once the finalizer is done, not lost (the job would run on to its end)."""
    steps = []

    class Finalized:
        def __del__(self):
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(1000):  # the handler runs in here, and Python drops its `Interrupted`
                    pass
                steps.append("finalizer ran on")
            finally:
                steps.append("finalizer left")

    with StopSignals() as signals:
        started = time.monotonic()
        with pytest.raises(Interrupted) as stop:
            Finalized()
            time.sleep(5)  # the signal, sent again, ends the sleep
            steps.append("ran on")
        assert time.monotonic() - started < 2
        assert stop.value.exit_code == 143 and signals.received == signal.SIGTERM
    assert steps == ["finalizer left"]


STOPPED_THEN_SIGNALLED = """
import atexit, os, signal, sys, time
from runner.orchestration.signals import exit_within

def ray_shutdown():  # as Ray's own at exit; a second Ctrl-C lands in it
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.3)
    print("shut down")

atexit.register(ray_shutdown)
exit_within(130, 5)
sys.exit(130)
"""


def test_once_the_output_is_final_a_later_signal_cannot_break_the_exit():
    """A second Ctrl-C after the stop path ended used to interrupt Ray's shutdown at exit, whose core
    worker then crashed the process (exit -11 for 130)."""
    done = subprocess.run(
        [sys.executable, "-c", STOPPED_THEN_SIGNALLED],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout) == (130, "shut down\n"), done.stderr
