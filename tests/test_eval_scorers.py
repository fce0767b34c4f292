"""Scorers, the eval config and the statistics, without a model: every scorer against known answers."""

from __future__ import annotations

import math

import pytest

from jobs.eval.compare import parse_gate
from jobs.eval.config import EvalConfig, ScoringConfig
from jobs.eval.metrics import mean_stderr
from jobs.eval.multiple_choice import accuracy, argmax, encode_pair, gold_index
from jobs.eval.scorers import last_number, resolve
from runner.config import build_config
from runner.errors import ConfigError


def score(generation: str, target, **options) -> float:
    cfg = ScoringConfig(target_column="t", **options)
    return resolve(cfg)({"t": target}, generation)


@pytest.mark.parametrize(
    ("generation", "target", "options", "expected"),
    [
        (" Paris\n", "Paris", {}, 1.0),
        ("Paris", "paris", {}, 0.0),
        ("Paris", "paris", {"lowercase": True}, 1.0),
        ("Paris.", "Paris", {}, 0.0),
        ("Paris.", "Paris", {"strip_punctuation": True}, 1.0),
        (" Paris", "Paris", {"strip": False}, 0.0),
        ("Lyon", ["Paris", "Lyon"], {}, 1.0),  # a list of targets: any of them counts
    ],
)
def test_exact_match_options(generation, target, options, expected):
    assert score(generation, target, scorer="exact_match", **options) == expected


def test_regex_extracts_the_last_number_or_a_boxed_answer():
    number = {"scorer": "regex", "pattern": r"(-?\d+(?:\.\d+)?)"}
    assert score("3 apples and 4 pears make 7", "7", **number) == 1.0
    assert score("3 apples and 4 pears make 7", "3", **number) == 0.0
    assert score("3 apples and 4 pears make 7", "3", match="first", **number) == 1.0
    assert score("no digits here", "7", **number) == 0.0
    boxed = {"scorer": "regex", "pattern": r"\\boxed\{([^}]*)\}"}
    assert score(r"so \boxed{12} then \boxed{ 42 }", "42", **boxed) == 1.0
    assert score("x = 5", "5", scorer="regex", pattern=r"\d") == 1.0  # no group: the whole match


def test_contains_choice_letter_f1_numeric():
    assert score("The answer is Paris, France", "paris", scorer="contains", lowercase=True) == 1.0
    assert score("The answer is Lyon", "Paris", scorer="contains") == 0.0
    assert score("I think (B) because A is wrong", "B", scorer="choice_letter") == 1.0
    assert score("Answer: C", "2", scorer="choice_letter") == 1.0  # an index means A, B, C, ...
    assert score("Answer: c", "C", scorer="choice_letter") == 0.0  # capitals only: 'c' is no choice
    assert score("(D) is right", "d.", scorer="choice_letter") == 1.0  # the target may be written loosely
    with pytest.raises(ValueError, match="not a choice letter A-E or an index 0-4"):
        score("A", "Paris", scorer="choice_letter")
    with pytest.raises(ValueError, match="holds no number"):
        score("42", "forty-two", scorer="numeric")
    assert score("the cat sat", "The cat sat.", scorer="f1") == 1.0
    # pred tokens [cat, sat, down], gold [cat, sat]: precision 2/3, recall 1 -> f1 0.8
    assert score("cat sat down", "a cat sat", scorer="f1") == pytest.approx(0.8)
    assert score("dog", "cat", scorer="f1") == 0.0
    assert score("it costs 1,234.5 dollars", "1234.5", scorer="numeric") == 1.0
    assert score("about 99.5", "100", scorer="numeric", tolerance=0.5) == 1.0
    assert score("about 99.4", "100", scorer="numeric", tolerance=0.5) == 0.0
    assert score("about 99", "100", scorer="numeric", rel_tolerance=0.02) == 1.0
    assert score("none", "100", scorer="numeric") == 0.0
    assert last_number("-3 then .5") == 0.5


def test_a_users_own_scorer_gets_the_row_and_the_generation():
    cfg = ScoringConfig(scorer="tests.eval_custom_scorer:length_at_most")
    assert cfg.metrics == ["length_at_most"]
    fn = resolve(cfg)
    assert fn({"max_chars": 3}, "abc") == 1.0 and fn({"max_chars": 2}, "abc") == 0.0


def eval_tree(**scoring) -> dict:
    return {"model": {"path": "demo:tiny-llama"}, "data": {"source": "x.jsonl"}, "scoring": scoring}


@pytest.mark.parametrize(
    ("scoring", "message"),
    [
        ({"scorer": "exakt", "target_column": "a"}, "unknown scorer 'exakt' (known: exact_match, regex,"),
        ({"scorer": "regex", "target_column": "a"}, "scorer regex needs a pattern"),
        ({"scorer": "regex", "target_column": "a", "pattern": "("}, "scoring.pattern: not a valid regular"),
        ({"scorer": "multiple_choice", "target_column": "a"}, "choices_column is set exactly when"),
        ({"scorer": "exact_match"}, "scorer exact_match needs target_column"),
        ({"scorer": "exact_match", "target_column": "a", "tolerence": 1}, "scoring.tolerence: unknown key"),
        (
            {"scorer": "f1", "target_column": "a", "metric": "error"},
            "metric name 'error' is an output column",
        ),
    ],
)
def test_bad_scoring_is_one_config_error_naming_the_field(scoring, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        build_config(eval_tree(**scoring), EvalConfig)


def test_a_custom_scorer_that_does_not_import_is_a_config_error():
    with pytest.raises(ConfigError, match="scoring.scorer: cannot load 'tests.nope:f'"):
        resolve(ScoringConfig(scorer="tests.nope:f"))


def test_tasks_form_checks_names_and_forms():
    task = {"name": "a", "data": {"source": "x.jsonl"}, "scoring": {"scorer": "f1", "target_column": "t"}}
    base = {"model": {"path": "demo:tiny-llama"}}
    cfg = build_config({**base, "tasks": [task, {**task, "name": "b"}]}, EvalConfig)
    assert [t.name for t in cfg.task_list()] == ["a", "b"] and cfg.metric_columns() == ["f1"]
    with pytest.raises(ConfigError, match="task name 'a' is used twice"):
        build_config({**base, "tasks": [task, task]}, EvalConfig)
    with pytest.raises(ConfigError, match="with tasks, data and scoring go inside each task"):
        build_config({**base, "tasks": [task], "data": task["data"]}, EvalConfig)
    with pytest.raises(ConfigError, match="tasks.0.name: use only letters"):
        build_config({**base, "tasks": [{**task, "name": "a/b"}]}, EvalConfig)


def test_scoring_changes_the_result_hash_so_resume_refuses_other_scoring():
    a = build_config(eval_tree(scorer="exact_match", target_column="a"), EvalConfig)
    b = build_config(eval_tree(scorer="exact_match", target_column="a", lowercase=True), EvalConfig)
    assert a.result_hash() != b.result_hash()
    assert "scoring" in EvalConfig.result_sections and "tasks" in EvalConfig.result_sections


def test_mean_and_stderr_as_lm_eval_reports_them():
    values = [1.0, 0.0, 1.0, 1.0]
    mean, se = mean_stderr(values)
    # lm-eval's mean_stderr: sqrt(sample_stddev(arr) ** 2 / len(arr)), sample_stddev with n - 1
    assert mean == 0.75 and se == pytest.approx(math.sqrt((3 * 0.0625 + 0.5625) / 3 / 4))
    assert mean_stderr([1.0]) == (1.0, None) and mean_stderr([]) == (None, None)


def test_multiple_choice_pieces_follow_lm_eval():
    def tokenize(text):  # one token per character: the split is visible
        return [ord(c) for c in text]

    head, tail = encode_pair(tokenize, "Question: ", " yes")
    assert head == tokenize("Question:") and tail == tokenize("  yes")  # trailing space moves over
    assert gold_index(1, ["a", "b"], "label") == 1 and gold_index("b", ["a", "b"], "label") == 1
    with pytest.raises(ValueError, match="outside the 2 choices"):
        gold_index(2, ["a", "b"], "label")
    with pytest.raises(ValueError, match="neither a choice index nor one of the choices"):
        gold_index("c", ["a", "b"], "label")
    assert argmax([1.0, 3.0, 3.0]) == 1  # ties: the first, as numpy

    from jobs.eval.multiple_choice import Question
    from runner.engine.scoring import ScoreResult

    # log-likelihoods -4 and -6: raw prefers choice 0; per character (-4/2, -6/6) prefers choice 1.
    q = Question("r", "context", ["ab", "abcdef"], 1, [])
    results = [ScoreResult("r#0", logprob=-4.0), ScoreResult("r#1", logprob=-6.0)]
    assert accuracy(q, results) == {"acc": 0.0, "acc_norm": 1.0}


@pytest.mark.parametrize(
    ("text", "kind", "task", "metric", "threshold"),
    [("acc=0.02", "max-drop", None, "acc", 0.02), ("arc/acc_norm=0.5", "fail-below", "arc", "acc_norm", 0.5)],
)
def test_gates_parse(text, kind, task, metric, threshold):
    gate = parse_gate(kind, text)
    assert (gate.task, gate.metric, gate.threshold) == (task, metric, threshold)


@pytest.mark.parametrize("text", ["acc", "acc=", "acc=lots", "=0.1"])
def test_unreadable_gates_are_config_errors(text):
    with pytest.raises(ConfigError, match=r"--max-drop .*expected \[TASK/\]METRIC=NUMBER"):
        parse_gate("max-drop", text)


def test_a_gate_on_a_metric_no_task_reports_fails_before_the_eval_runs(tmp_path, capsys):
    from runner.cli import main

    config = tmp_path / "eval.yaml"
    config.write_text(
        "model: {path: demo:tiny-llama}\nname: qa\ndata: {source: nowhere.jsonl}\n"
        "scoring: {scorer: exact_match, target_column: answer}\n"
    )
    assert main(["eval", str(config), "--fail-below", "acc=0.5"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --fail-below acc=0.5: no task reports this metric (known: qa/exact_match)"
    )
    assert main(["eval", str(config), "--max-drop", "exact_match=0.1"]) == 2  # a drop needs a baseline
    assert "--max-drop: needs a baseline" in capsys.readouterr().err
    assert main(["eval", str(config)]) == 2  # the missing data file, before Ray or a model
    assert capsys.readouterr().err.startswith("error: data.source: no such file or directory")


def test_output_columns_are_the_reserved_names_then_one_per_metric():
    from jobs.eval.config import RESERVED_COLUMNS
    from jobs.eval.stage import output_schema

    task = {"name": "a", "data": {"source": "x.jsonl"}, "scoring": {"scorer": "f1", "target_column": "t"}}
    mc = {
        "name": "b",
        "data": {"source": "x.jsonl"},
        "scoring": {"scorer": "multiple_choice", "target_column": "t", "choices_column": "c"},
    }
    cfg = build_config({"model": {"path": "demo:tiny-llama"}, "tasks": [task, mc]}, EvalConfig)
    assert output_schema(cfg).names == [*RESERVED_COLUMNS, "f1", "acc", "acc_norm"]
