"""A run's fixed start-up cost: the driver imports no torch or transformers (the replicas do), and the
start-up trace records each phase, driver and replica, in one file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from runner.orchestration import startup_trace

ROOT = Path(__file__).resolve().parent.parent

# What `runner run` / `runner eval` import on the driver before and while Ray starts: the CLI, the
# job kind, the lifecycle, the orchestration and the start check (which plans only when it must).
DRIVER_MODULES = [
    "runner.cli",
    "jobs.generate.cli",
    "jobs.generate.job",
    "jobs.eval.cli.eval",
    "jobs.eval.job",
    "runner.orchestration.job",
    "runner.orchestration.cluster",
    "runner.planning.start",
]


@pytest.mark.parametrize("heavy", ["torch", "transformers"])
def test_driver_imports_no_model_library(heavy):
    code = f"import sys, {', '.join(DRIVER_MODULES)}; print({heavy!r} in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    # Importing it costs the driver seconds of CPU on a small machine while Ray starts beside it.
    assert out.stdout.strip() == "False", f"the driver imports {heavy}"


def test_marks_and_report(tmp_path, monkeypatch):
    trace = tmp_path / "trace.txt"
    monkeypatch.setenv(startup_trace.ENV, str(trace))
    startup_trace.mark("first")
    startup_trace.mark("second")
    lines = trace.read_text().splitlines()
    phases = [line.split(" ", 2)[2] for line in lines]
    assert phases[-2:] == ["first", "second"]
    assert phases[0].startswith("process start")  # the first mark of a process also dates its start
    times = [float(line.split()[0]) for line in lines]
    assert times == sorted(times)
    report = startup_trace.report(str(trace)).splitlines()
    assert [line.split(maxsplit=3)[3] for line in report] == phases
    assert float(report[0].split()[0]) == 0.0


def test_unset_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv(startup_trace.ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    startup_trace.mark("nothing")
    assert list(tmp_path.iterdir()) == []
