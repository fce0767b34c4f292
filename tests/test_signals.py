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


def processes(field: int, value: int) -> list[int]:
    """Pids of the live processes whose /proc stat field (after the name) `field` is `value`:
    1 the parent pid, 2 the process group."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if entry.isdigit() and int(fields[field]) == value and fields[0] != "Z":
            found.append(int(entry))
    return found


def group_members(pgid: int) -> list[int]:
    return processes(2, pgid)


def children(pid: int) -> list[int]:
    return processes(1, pid)


def alive(pids: list[int]) -> list[int]:
    return [pid for pid in pids if os.path.exists(f"/proc/{pid}") and _state(pid) != "Z"]


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


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
        ray_processes = children(proc.pid)
        assert ray_processes and group_members(proc.pid) == [proc.pid]
        os.killpg(proc.pid, signal.SIGTERM)
        assert_stopped(job, proc, signal.SIGTERM, time.monotonic())
        deadline = time.monotonic() + 10
        while alive(ray_processes) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(ray_processes), "the driver's local Ray outlived it"
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
