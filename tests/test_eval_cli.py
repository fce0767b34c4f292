"""`runner eval --suite`, `runner compare` with its gates and `runner report`, through the CLI entry
point: a nightly suite whose second night regresses by a known amount."""

from __future__ import annotations

import json
import os
import re
import shutil
from xml.etree import ElementTree

import pyarrow.parquet as pq
import pytest

from jobs.eval.config import EvalConfig
from jobs.eval.suite import Suite
from jobs.generate.stage import GenerationStage
from runner.cli import main
from runner.config import JobConfig, build_config
from runner.io.inputs import read_input
from tests.conftest import PROMPTS, write_jsonl

QUESTIONS = [p[:40] for p in PROMPTS[:4]]


def tree(source, **extra) -> dict:
    return {
        "model": {"path": "demo:tiny-llama", "dtype": "float32"},
        "name": "em",
        "data": {"source": str(source), "id_column": "qid", "prompt": {"column": "question"}},
        "scoring": {"scorer": "exact_match", "target_column": "answer"},
        "sampling": {"max_new_tokens": 6},
        "placement": {"replicas": 1},
        "ray": {"num_cpus": 2, "num_gpus": 0},
        **extra,
    }


@pytest.fixture(scope="module")
def nights(tmp_path_factory) -> dict:
    """Two configs over the same questions: night 1's targets are all the model's greedy answers (1.0),
    night 2's only for the first two rows (0.5); rows q2, q3 flip."""
    folder = tmp_path_factory.mktemp("nights")
    questions = write_jsonl(
        folder / "q.jsonl", [{"qid": f"q{i}", "question": q} for i, q in enumerate(QUESTIONS)]
    )
    cfg = build_config(tree(questions), EvalConfig)
    job = JobConfig.model_validate(cfg.model_dump(include={"model", "sampling", "data"}))
    answers = GenerationStage(job)(read_input(job.data)).column("generation").to_pylist()
    paths = {}
    for night, right in (("one", 4), ("two", 2)):
        rows = [
            {"qid": f"q{i}", "question": q, "answer": a if i < right else "wrong"}
            for i, (q, a) in enumerate(zip(QUESTIONS, answers, strict=True))
        ]
        data = write_jsonl(folder / f"{night}.jsonl", rows)
        paths[night] = folder / f"{night}.yaml"
        paths[night].write_text(json.dumps(tree(data)))
    return paths


@pytest.mark.slow
def test_a_nightly_suite_records_runs_compares_and_gates(ray_cpu, nights, tmp_path, capsys):
    suite = tmp_path / "suite"
    assert main(["eval", str(nights["one"]), "--suite", str(suite), "--run-name", "night1"]) == 0
    assert os.readlink(suite / "latest") == os.path.join("runs", "night1")
    # Night 2 regresses from 1.0 to 0.5: gated against the suite's latest run in the same command.
    code = main(
        [
            "eval",
            str(nights["two"]),
            "--suite",
            str(suite),
            "--run-name",
            "night2",
            "--max-drop",
            "exact_match=0.1",
        ]
    )
    out = capsys.readouterr()
    assert code == 1
    assert (
        "error: --max-drop exact_match=0.1 violated: em exact_match fell 0.5000 (1.0000 -> 0.5000)" in out.err
    )
    assert "flipped em exact_match: 2 row(s): em/q2 (1->0), em/q3 (1->0)" in out.out
    assert os.readlink(suite / "latest") == os.path.join("runs", "night2")  # recorded before the gate

    history = pq.read_table(suite / "history.parquet").to_pandas()
    assert list(history["run"]) == ["night1", "night2"] and list(history["value"]) == [1.0, 0.5]
    assert set(history["metric"]) == {"exact_match"} and history["model_revision"].notna().all()
    import duckdb

    query = f"SELECT run, value FROM '{suite}/history.parquet' ORDER BY finished_at"
    assert duckdb.sql(query).fetchall() == [("night1", 1.0), ("night2", 0.5)]

    assert main(["compare", "--suite", str(suite)]) == 0
    lines = capsys.readouterr().out
    # paired differences (0, 0, -1, -1): mean -0.5, sample variance 1/3, se sqrt(1/3 / 4)
    assert "em                   exact_match        1.0000   0.5000   -0.5000    0.2887      4" in lines
    assert main(["compare", "--suite", str(suite), "--max-drop", "exact_match=0.6"]) == 0
    assert main(["compare", "--suite", str(suite), "--fail-below", "em/exact_match=0.9"]) == 1
    assert main(["compare", "--suite", str(suite), "--fail-below", "exact_match=0.5"]) == 0
    assert (
        main(
            ["compare", str(suite / "runs/night2"), str(suite / "runs/night1"), "--max-drop", "exact_match=0"]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["compare", "--suite", str(suite), "--max-drop", "acc=0.1"]) == 2  # no task reports acc
    assert "no task reports this metric (known: em/exact_match)" in capsys.readouterr().err
    assert main(["compare", str(suite / "runs/night1"), str(tmp_path / "nothing")]) == 2
    assert main(["compare", str(suite / "runs/night1")]) == 2
    unfinished = tmp_path / "unfinished"
    shutil.copytree(suite / "runs/night1", unfinished)
    summary = json.loads((unfinished / "_job.json").read_text())
    (unfinished / "_job.json").write_text(json.dumps({**summary, "status": "interrupted"}))
    assert main(["compare", str(unfinished), str(suite / "runs/night2")]) == 2
    assert "the run did not finish (status interrupted)" in capsys.readouterr().err

    # A fixed --baseline in the same command: night 1's config against night 2's run.
    code = main(
        [
            "eval",
            str(nights["one"]),
            "--output",
            str(tmp_path / "adhoc"),
            "--baseline",
            str(suite / "latest"),
            "--fail-below",
            "exact_match=0.9",
        ]
    )
    assert code == 0 and "gates passed: --fail-below exact_match=0.9" in capsys.readouterr().out

    assert main(["report", str(suite), "-o", str(tmp_path / "report.html")]) == 0
    page = (tmp_path / "report.html").read_text()
    for svg in re.findall(r"<svg.*?</svg>", page, re.S):
        ElementTree.fromstring(svg)  # well-formed, so every browser draws it
    assert page.count("<svg") == 1
    assert re.search(r"night1 \(demo:tiny-llama @ sha256:\w+\): 1\.0000", page)
    assert re.search(r"night2 \(demo:tiny-llama @ sha256:\w+\): 0\.5000", page)
    # night 2's gate failed in `runner eval`: the verdict is in its run, so on the page
    assert "FAILED: --max-drop exact_match=0.1 violated: em exact_match fell 0.5000" in page
    assert (
        "em/q3" in page
        and "<script" not in page
        and "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    )


def test_a_suite_resumes_an_unfinished_run_of_the_same_settings(nights, tmp_path):
    cfg = build_config(json.loads(nights["one"].read_text()), EvalConfig)
    suite = Suite(tmp_path / "suite")
    first = suite.run_dir(cfg, "night-{config_hash}")
    assert first.name == f"night-{cfg.result_hash()}"
    assert first.is_dir() and not any(first.iterdir())  # made here: a second eval cannot choose it too
    (first / "_job.json").write_text(json.dumps({"config_hash": cfg.result_hash(), "status": "interrupted"}))
    assert suite.run_dir(cfg, "other") == first  # killed last night: resumed, not started anew
    (first / "_job.json").write_text(json.dumps({"config_hash": cfg.result_hash(), "status": "done"}))
    assert suite.run_dir(cfg, "other").name == "other"
    with pytest.raises(Exception, match="--run-name: cannot fill"):
        suite.run_dir(cfg, "{nope}")
