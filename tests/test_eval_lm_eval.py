"""Agreement with lm-evaluation-harness: the same tiny model and local tasks through lm-eval's `hf`
model and through `runner eval` give the same acc, acc_norm and exact_match (and standard errors),
and row by row the same choice log-likelihoods, generations and scores
(`scripts/crosscheck_lm_eval.py`; lm-eval is in the `test` extra)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # lm-eval and runner eval over the same tasks

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "crosscheck_lm_eval.py"


def test_runner_eval_agrees_with_lm_eval(ray_cpu, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    spec = importlib.util.spec_from_file_location("crosscheck_lm_eval", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    ok, lines = script.crosscheck(tmp_path / "work")
    assert ok, "\n".join(lines)
    assert lines[-1].endswith(": 0 differ") and os.path.isdir(tmp_path / "work" / "runner-out")
