"""The eval job through Ray Data on the demo model, with eval sets whose scores are known exactly:
targets are the model's own greedy output for half the rows (so exact_match is exactly 0.5), and
multiple-choice labels are the choice an unbatched forward pass ranks first for half the rows."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch

from jobs.eval.config import EvalConfig
from jobs.eval.job import run
from jobs.eval.metrics import METRICS_NAME
from jobs.generate.stage import GenerationStage
from runner.config import JobConfig, build_config
from runner.io.inputs import read_input
from tests.conftest import PROMPTS, write_jsonl

pytestmark = pytest.mark.slow  # whole eval jobs on Ray

MODEL = {"path": "demo:tiny-llama", "dtype": "float32"}
SAMPLING = {"max_new_tokens": 8}
TEMPLATE = "Q: {{ question }}\nA:"
QUESTIONS = [f"{p[:60]} ({i})" for i, p in enumerate(PROMPTS + PROMPTS[:2])]  # 8 rows
MC = [
    ("The quick brown fox jumps over the lazy", ["dog", "sea", "mountain range"]),
    ("What is the capital of France?", ["Rome", "Paris", "Tokyo", "Cairo"]),
    ("Write a short poem about the", ["sea", "transformer model"]),
    ("List five prime numbers:", ["2, 3, 5, 7, 11", "4, 6, 8"]),
    ("A sunset over the", ["mountains", "code", "token"]),
    ("def add(a, b): return", ["a + b", "a - b"]),
]


@pytest.fixture(scope="module")
def greedy(tmp_path_factory) -> list[str]:
    """The model's greedy answer to each question, from the generate stage in this process."""
    source = write_jsonl(tmp_path_factory.mktemp("q") / "q.jsonl", [{"question": q} for q in QUESTIONS])
    cfg = JobConfig.model_validate(
        {
            "model": MODEL,
            "sampling": SAMPLING,
            "data": {"source": str(source), "prompt": {"template": TEMPLATE}},
        }
    )
    texts = GenerationStage(cfg)(read_input(cfg.data)).column("generation").to_pylist()
    assert all(len(t.strip()) >= 3 for t in texts), "the fixture needs answers with a few characters"
    return texts


def choice_logprobs(tokenizer, model, context: str, choices: list[str]) -> list[float]:
    """The oracle: each ' choice' after the context, one unbatched forward pass each."""
    out = []
    for choice in choices:
        head = tokenizer(context)["input_ids"]
        whole = tokenizer(context + " " + choice)["input_ids"]
        with torch.no_grad():
            logprobs = model(input_ids=torch.tensor([whole])).logits[0].log_softmax(-1)
        out.append(sum(logprobs[p - 1, whole[p]].item() for p in range(len(head), len(whole))))
    return out


@pytest.fixture(scope="module")
def mc_oracle(runner_cache) -> list[dict]:
    """Per question: the choices' log-likelihoods, a label (the top choice for even rows, another
    for odd ones) and the acc / acc_norm that label must get."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from runner.engine.demo_model import resolve_demo

    path = resolve_demo(MODEL["path"])
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()
    rows = []
    for i, (context, choices) in enumerate(MC):
        lls = choice_logprobs(tokenizer, model, context, choices)
        top = max(range(len(lls)), key=lambda k: lls[k])
        norm_top = max(range(len(lls)), key=lambda k: lls[k] / len(choices[k]))
        label = top if i % 2 == 0 else (top + 1) % len(choices)
        acc_norm = float(norm_top == label)
        rows.append({"lls": lls, "label": label, "acc": float(i % 2 == 0), "acc_norm": acc_norm})
    return rows


def task(name: str, source, **scoring) -> dict:
    return {
        "name": name,
        "data": {"source": str(source), "id_column": "qid", "prompt": {"template": TEMPLATE}},
        "scoring": scoring,
    }


@pytest.fixture(scope="module")
def eval_sets(tmp_path_factory, greedy, mc_oracle) -> dict:
    """Data files and the config tree of a job with one task per scorer, plus multiple choice."""
    folder = tmp_path_factory.mktemp("evalsets")
    rows = []
    for i, (q, g) in enumerate(zip(QUESTIONS, greedy, strict=True)):
        right = i % 2 == 0
        rows.append(
            {
                "qid": f"q{i}",
                "question": q,
                "answer": g if right else "no such answer",
                "part": g.strip()[:3] if right else "\u2603\u2603",
                "head": g[:2] if right else "\u2603\u2603",
                "max_chars": len(g) if right else -1,
            }
        )
    rows.append(
        {"qid": "bad", "question": "Hello", "answer": None, "part": None, "head": None, "max_chars": None}
    )
    qa = write_jsonl(folder / "qa.jsonl", rows)
    mc_rows = [
        {"qid": f"m{i}", "question": context, "choices": choices, "label": oracle["label"]}
        for i, ((context, choices), oracle) in enumerate(zip(MC, mc_oracle, strict=True))
    ]
    mc_rows.append({"qid": "m-bad", "question": "Hello", "choices": ["a", "b"], "label": 5})
    mc = write_jsonl(folder / "mc.jsonl", mc_rows)
    with open(mc, "a") as f:  # a line the reader cannot parse: an error row of its own, not a failed job
        f.write('{"qid": "m-broken", "question": \n')
    mc_task = task("mc", mc, scorer="multiple_choice", choices_column="choices", target_column="label")
    mc_task["data"]["prompt"] = {"template": "{{ question }}"}
    tasks = [
        task("em", qa, scorer="exact_match", target_column="answer"),
        task("contains", qa, scorer="contains", target_column="part"),
        task(
            "regex",
            qa,
            scorer="regex",
            target_column="head",
            pattern="(?s)^(.{2})",
            match="first",
            strip=False,
        ),
        task("f1", qa, scorer="f1", target_column="answer"),
        task("custom", qa, scorer="tests.eval_custom_scorer:length_at_most", target_column="answer"),
        mc_task,
    ]
    tree = {
        "model": MODEL,
        "sampling": SAMPLING,
        "tasks": tasks,
        "batching": {"rows_per_task": 8},
        "placement": {"replicas": 1},
        "output": {"rows_per_file": 10},
        "ray": {"num_cpus": 2, "num_gpus": 0},
    }
    return {"tree": tree, "qa": qa, "mc": mc}


def config(tree: dict, out) -> EvalConfig:
    return build_config({**tree, "output": {**tree["output"], "path": str(out)}}, EvalConfig)


@pytest.fixture(scope="module")
def first_run(ray_cpu, eval_sets, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    document = run(config(eval_sets["tree"], out))
    return out, document


def test_every_scorer_gets_exactly_the_known_score(first_run):
    out, document = first_run
    tasks = document["tasks"]
    for name, metric in [("em", "exact_match"), ("contains", "contains"), ("regex", "regex"), ("f1", "f1")]:
        assert tasks[name][metric] == 0.5, name
        assert (tasks[name]["n"], tasks[name]["errors"]) == (8, 1), name  # the null target is an error row
    # a scorer that raises (here: max_chars is null) makes an error row, as a missing target does
    assert tasks["custom"]["length_at_most"] == 0.5 and (tasks["custom"]["n"], tasks["custom"]["errors"]) == (
        8,
        1,
    )
    # lm-eval's stderr of eight 0/1 scores, half of them 1: sqrt((8 * 0.25 / 7) / 8)
    assert tasks["em"]["exact_match_stderr"] == pytest.approx((8 * 0.25 / 7 / 8) ** 0.5)
    assert json.loads((out / METRICS_NAME).read_text()) == document
    assert document["model_revision"].startswith("sha256:") and document["config_hash"]
    table = pq.read_table(out)
    tokens = sum(table.column("prompt_tokens").to_pylist()) + sum(
        table.column("completion_tokens").to_pylist()
    )
    assert document["tokens"] == tokens > 0 and document["code_version"].startswith("0.1.0")


def test_multiple_choice_equals_the_unbatched_oracle(first_run, mc_oracle):
    out, document = first_run
    rows = {r["id"]: r for r in pq.read_table(out).to_pylist() if r["task"] == "mc"}
    for i, oracle in enumerate(mc_oracle):
        row = rows[f"mc/m{i}"]
        assert row["choice_logprobs"] == pytest.approx(oracle["lls"], abs=1e-4)
        assert (row["acc"], row["acc_norm"]) == (oracle["acc"], oracle["acc_norm"])
        assert row["prompt"] == MC[i][0] and row["generation"] is None and row["error"] is None
    assert document["tasks"]["mc"]["acc"] == 0.5
    expected_norm = sum(o["acc_norm"] for o in mc_oracle) / len(mc_oracle)
    assert document["tasks"]["mc"]["acc_norm"] == pytest.approx(expected_norm)
    assert "outside the 2 choices" in rows["mc/m-bad"]["error"] and rows["mc/m-bad"]["error_kind"] == "row"
    broken = rows["mc/input-error-row-00000007"]
    assert "line 8: not a JSON object" in broken["error"] and broken["error_kind"] == "row"
    assert document["tasks"]["mc"]["errors"] == 2


def test_output_is_per_row_parquet_readable_as_a_directory(first_run):
    import pandas as pd

    out, _ = first_run
    frame = pd.read_parquet(out)  # _job.json and _metrics.json are skipped by the reader
    assert len(frame) == 5 * 9 + 8 and frame["id"].is_unique
    em = frame[frame.task == "em"].set_index("id")
    assert em.loc["em/q0", "exact_match"] == 1.0 and em.loc["em/q1", "exact_match"] == 0.0
    assert em.loc["em/bad", "error"] == "scorer exact_match: ValueError: column 'answer' is null"
    assert em.loc["em/bad", "generation"]  # the generation is kept next to the error


def test_a_killed_run_resumes_and_ends_with_the_same_metrics(first_run, eval_sets, tmp_path):
    import shutil

    out, document = first_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    parts = sorted(copy.glob("part-*.parquet"))
    assert len(parts) > 2
    lost = pq.read_table(parts[-1]).num_rows + pq.read_table(parts[-2]).num_rows
    for part in parts[-2:]:  # as if the driver died before committing them
        part.unlink()
    (copy / METRICS_NAME).unlink()
    again = run(config(eval_sets["tree"], copy))
    summary = json.loads((copy / "_job.json").read_text())
    assert summary["rows_ok"] + summary["rows_error"] == lost
    assert summary["rows_skipped_already_done"] == 5 * 9 + 8 - lost
    assert again["tasks"] == document["tasks"]


def test_resuming_with_other_scoring_is_refused(first_run, eval_sets):
    from runner.errors import OutputError

    out, _ = first_run
    tree = json.loads(json.dumps(eval_sets["tree"]))
    tree["tasks"][0]["scoring"]["lowercase"] = True
    with pytest.raises(OutputError, match=r"different settings \(tasks\)"):
        run(config(tree, out))
