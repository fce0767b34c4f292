"""The eval report and `runner compare` answer "what changed, which model, did the gate pass": runs
built directly as output directories (parts, `_job.json`, `_metrics.json`) and recorded in a suite,
so the page is checked without running a model; the multiple-choice target through the real stage."""

from __future__ import annotations

import json
import re
from pathlib import Path
from xml.etree import ElementTree

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.eval import compare
from jobs.eval.metrics import mean_stderr
from jobs.eval.report import render
from jobs.eval.suite import Suite
from runner.cli import main

IDS = ["q0", "q1", "q2", "q3"]


def make_run(suite: Suite, name: str, model: str, revision: str | None, scores: dict, gate=None) -> Path:
    """A finished eval run of tasks {task: {metric: [per-row score]}}, recorded in `suite`."""
    path = suite.runs / name
    path.mkdir(parents=True)
    rows, tasks = [], {}
    for task, metrics in scores.items():
        for i, row_id in enumerate(IDS):
            row = {"id": f"{task}/{row_id}", "task": task, "error": None, "generation": f"answer {i}"}
            row |= {"target": "Paris", **{m: values[i] for m, values in metrics.items()}}
            rows.append(row)
        tasks[task] = {"n": len(IDS), "errors": 0}
        for metric, values in metrics.items():
            tasks[task][metric], tasks[task][f"{metric}_stderr"] = mean_stderr(values)
    columns = {key for row in rows for key in row}  # every task's metric columns, null where not its own
    table = pa.Table.from_pylist([{c: row.get(c) for c in sorted(columns)} for row in rows])
    pq.write_table(table, path / "part-00000.parquet")
    (path / "_job.json").write_text(json.dumps({"status": "done", "config_hash": "h1"}))
    document = {"tasks": tasks, "model": model, "model_revision": revision, "config_hash": "h1"}
    document |= {"code_version": "0.1.0+abc", "status": "done"} | ({"gate": gate} if gate else {})
    (path / "_metrics.json").write_text(json.dumps(document))
    suite.record(path, document)
    return path


@pytest.fixture
def suite(tmp_path) -> Path:
    """Three nights: a revision change between 1 and 2, a model change between 2 and 3; night 3's gate
    failed; `delta` is a metric whose values round to zero from below."""
    book = Suite(tmp_path / "nightly")
    passed = {"passed": True, "gates": ["--max-drop acc=0.02"], "skipped": [], "violations": []}
    failed = {
        "passed": False,
        "gates": ["--max-drop acc=0.02"],
        "skipped": [],
        "violations": ["--max-drop acc=0.02 violated: mc acc fell 0.5000 (0.7500 -> 0.2500) > 0.02"],
    }
    delta = [-4e-6, 0.0, 0.0, 0.0]
    make_run(book, "night1", "org/model-a", "rev1", {"mc": {"acc": [1, 1, 1, 0], "delta": delta}}, passed)
    make_run(book, "night2", "org/model-a", "rev2", {"mc": {"acc": [1, 1, 1, 0], "delta": delta}}, passed)
    make_run(book, "night3", "org/model-b", "rev9", {"mc": {"acc": [1, 0, 0, 0], "delta": [0.0] * 4}}, failed)
    return book.root


def test_the_page_answers_which_model_and_whether_the_gate_passed(suite):
    page = render(str(suite))
    assert "<title>Eval report: nightly</title>" in page and "<h1>Eval report: nightly</h1>" in page
    assert "suite suite" not in page.lower()
    latest = page[page.index("<h2>Latest run: night3</h2>") : page.index("<h2>Runs</h2>")]
    assert "FAILED: --max-drop acc=0.02 violated: mc acc fell 0.5000" in latest
    assert "org/model-b @ rev9" in latest
    assert "the runs evaluated different models: org/model-a -&gt; org/model-b" in latest
    assert "mc acc: 0.7500 -&gt; 0.2500 (-0.5000; paired se 0.2887, within 2 se; 2 row(s) flipped)" in latest
    assert "mc delta" not in latest  # changed by less than the shown precision
    runs = page[page.index("<h2>Runs</h2>") : page.index("<h2>Metrics over runs</h2>")]
    assert runs.count("passed (--max-drop acc=0.02)") == 2 and runs.count('class="fail"') == 1
    assert runs.count('class="changed"') == 3  # night2: revision; night3: model and revision
    for night in ("night1", "night2", "night3"):
        assert night in runs


def test_every_run_is_labelled_on_the_x_axis_and_model_changes_are_marked(suite):
    page = render(str(suite))
    svgs = re.findall(r"<svg.*?</svg>", page, re.S)
    assert len(svgs) == 2  # mc acc, mc delta
    for svg in svgs:
        svg_ns = "{http://www.w3.org/2000/svg}"
        texts = []
        for text in ElementTree.fromstring(svg).iter(f"{svg_ns}text"):
            title = text.find(f"{svg_ns}title")  # the full name, shown on hover; the label follows it
            texts.append(title.tail if title is not None else text.text)
        assert {"night1", "night2", "night3"} <= set(texts)
        assert texts.count("model changed") == 2  # rev1 -> rev2, then model-a -> model-b
    assert "night3 (org/model-b @ rev9): 0.2500 ± 0.2500" in page


def test_no_negative_zero_anywhere(suite):
    page = render(str(suite))
    assert not re.search(r"-0\.0+(?![0-9]*[1-9])", page), re.findall(r".{40}-0\.0+.{10}", page)
    assert compare.fmt(-4e-6) == "0.0000" and compare.fmt(-4e-6, signed=True) == "0.0000"
    assert compare.fmt(-0.0, digits=2) == "0.00" and compare.fmt(-0.25, signed=True) == "-0.2500"
    assert compare.fmt(0.125, signed=True) == "+0.1250" and compare.fmt(None) == "-"


def test_compare_names_both_models_and_a_switch(suite, capsys):
    assert main(["compare", str(suite / "runs/night2"), str(suite / "runs/night3")]) == 0
    out = capsys.readouterr().out
    assert f"base: {suite / 'runs/night2'}  (org/model-a @ rev2)" in out
    assert f"new:  {suite / 'runs/night3'}  (org/model-b @ rev9)" in out
    assert "note: the runs evaluated different models: org/model-a -> org/model-b" in out
    assert main(["compare", str(suite / "runs/night1"), str(suite / "runs/night2")]) == 0
    assert "note: org/model-a changed revision: rev1 -> rev2" in capsys.readouterr().out
    assert main(["compare", str(suite / "runs/night2"), str(suite / "runs/night1")]) == 0
    assert "-0.0000" not in capsys.readouterr().out  # delta's mean differs by 0 after rounding


def test_a_gated_eval_records_its_verdict_in_the_run(suite):
    base, new = str(suite / "runs/night2"), str(suite / "runs/night3")
    gates = compare.parse_gates(["acc=0.02"], ["delta=-1"])
    with pytest.raises(compare.GateFailed, match="mc acc fell 0.5000"):
        compare.gate_command(base, new, gates, record=True)
    gate = json.loads((Path(new) / "_metrics.json").read_text())["gate"]
    assert gate["passed"] is False and gate["baseline"] == base
    assert gate["baseline_model"] == "org/model-a @ rev2"
    assert gate["gates"] == ["--max-drop acc=0.02", "--fail-below delta=-1"]
    assert gate["violations"] == [
        "--max-drop acc=0.02 violated: mc acc fell 0.5000 (0.7500 -> 0.2500) > 0.02"
    ]
    # The first night has no baseline: its --max-drop is skipped, said so, and the fail-below passes.
    assert compare.gate_command(None, str(suite / "runs/night1"), gates, record=True) == 0
    first = json.loads((suite / "runs/night1/_metrics.json").read_text())["gate"]
    assert first["passed"] and first["skipped"] == ["--max-drop acc=0.02"] and first["baseline"] is None
    assert "skipped without a baseline: --max-drop acc=0.02" in render(str(suite))
    # A plain `runner compare` changes nothing in the runs it reads.
    before = (suite / "runs/night2/_metrics.json").read_text()
    assert main(["compare", base, str(suite / "runs/night1"), "--max-drop", "acc=0.5"]) == 0
    assert (suite / "runs/night2/_metrics.json").read_text() == before


def test_multiple_choice_targets_are_written_as_the_choice_text(tiny_model):
    from jobs.eval.config import EvalConfig
    from jobs.eval.stage import ChoiceTask
    from runner.config import build_config
    from runner.engine import Engine

    cfg = build_config(
        {
            "model": {"path": tiny_model, "dtype": "float32"},
            "name": "mc",
            "data": {"source": "unused.jsonl", "prompt": {"column": "question"}},
            "scoring": {"scorer": "multiple_choice", "choices_column": "choices", "target_column": "label"},
        },
        EvalConfig,
    )
    engine = Engine(cfg.model, cfg.sampling, cfg.batching)
    try:
        rows = [
            {"id": "a", "question": "The sky is", "choices": ["blue", "green", "red"], "label": 2},
            {"id": "b", "question": "The sky is", "choices": ["blue", "green"], "label": "green"},
            {"id": "c", "question": "The sky is", "choices": ["blue", "green"], "label": 7},
        ]
        out = ChoiceTask(cfg.task_list()[0], engine)(rows)
    finally:
        engine.close()
    assert [r["target"] for r in out] == ["red", "green", "7"]  # an index outside the choices stays as given
    assert out[2]["error"] and "outside the 2 choices" in out[2]["error"]
