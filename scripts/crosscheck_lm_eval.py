"""Cross-check `runner eval` against lm-evaluation-harness on the same tiny model and local tasks.

    pip install 'lm-eval>=0.4,<0.5'
    python scripts/crosscheck_lm_eval.py [--workdir DIR] [--model demo:tiny-llama]

Builds the demo model locally, writes two local tasks (JSONL data + lm-eval task YAMLs): a
`multiple_choice` task (acc, acc_norm) and a `generate_until` task scored by exact_match whose
targets are the model's own greedy answers for half the rows. Runs both through lm-eval's Python API
(`hf` model, CPU, float32) and through `runner eval` (a local Ray, one replica), and prints each
metric and its standard error from both. Exit 0 when every metric is equal, 1 otherwise. Offline:
no model or dataset downloads. Takes a minute or two on a laptop CPU.

Settings that must match lm-eval's: the choice follows the context after `target_delimiter: " "`,
exact_match compares the raw text (`strip: false`; lm-eval strips nothing unless told), generation
stops at "\\n" (lm-eval's `until`). The demo tokenizer adds no BOS, so lm-eval's default
`add_bos_token=False` and our tokenization agree; for a tokenizer that adds BOS, pass
`--lm-eval-args add_bos_token=True`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

QA = [
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain how a transformer model predicts the next token.",
    "Summarise the history of Rome in three lines.",
    "List five prime numbers.",
    "Describe a sunset over the mountains.",
    "Translate 'good morning' into Spanish.",
    "def add(a, b): return a + b",
]
MC = [
    ("The quick brown fox jumps over the lazy", ["dog", "sea", "mountain range"], 0),
    ("What is the capital of France?", ["Rome", "Paris", "Tokyo", "Cairo"], 1),
    ("Write a short poem about the", ["sea", "transformer model"], 0),
    ("List five prime numbers:", ["2, 3, 5, 7, 11", "4, 6, 8"], 0),
    ("A sunset over the", ["mountains", "code", "token"], 0),
    ("def add(a, b): return", ["a + b", "a - b"], 1),
    ("Translate 'good morning' into", ["Spanish", "emoji"], 0),
    ("Summarise the history of", ["Rome", "unicode text should tokenize"], 1),
]
MAX_NEW = 8
TEMPLATE = "Q: {{question}}\nA:"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def greedy_answers(model: str, qa: Path) -> list[str]:
    """The model's greedy answers, from the runner's generate stage (targets for half the rows)."""
    from jobs.generate.stage import GenerationStage
    from runner.config import JobConfig
    from runner.io.inputs import read_input

    cfg = JobConfig.model_validate(
        {
            "model": {"path": model, "dtype": "float32"},
            "data": {"source": str(qa), "prompt": {"template": TEMPLATE}},
            "sampling": {"max_new_tokens": MAX_NEW, "stop": ["\n"]},
        }
    )
    return GenerationStage(cfg)(read_input(cfg.data)).column("generation").to_pylist()


def lm_eval_yaml(folder: Path, mc: Path, qa: Path) -> None:
    (folder / "xc_mc.yaml").write_text(
        f"""task: xc_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {mc}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""
    )
    (folder / "xc_qa.yaml").write_text(
        f"""task: xc_qa
dataset_path: json
dataset_kwargs:
  data_files:
    test: {qa}
test_split: test
output_type: generate_until
doc_to_text: "Q: {{{{question}}}}\\nA:"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  do_sample: false
  max_gen_toks: {MAX_NEW}
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""
    )


def run_lm_eval(path: str, folder: Path, extra: str) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    args = f"pretrained={path},dtype=float32" + (f",{extra}" if extra else "")
    out = lm_eval.simple_evaluate(
        model="hf",
        model_args=args,
        tasks=["xc_mc", "xc_qa"],
        task_manager=TaskManager(include_path=str(folder)),
        batch_size=4,
        device="cpu",
        log_samples=True,
    )
    res = out["results"]
    pick = {"xc_mc": ("acc", "acc_norm"), "xc_qa": ("exact_match",)}
    metrics = {
        task: {k: res[task][f"{k},none"] for m in metrics for k in (m, f"{m}_stderr")}
        for task, metrics in pick.items()
    }
    return {"metrics": metrics, "samples": out["samples"]}


def rows_differ(samples: dict, out: Path) -> list[str]:
    """Per row: lm-eval's choice log-likelihoods, generation and scores against ours."""
    import pyarrow.parquet as pq

    ours = {r["id"]: r for r in pq.read_table(out).to_pylist()}
    problems = []
    for task, entries in samples.items():
        for sample in entries:
            row = ours[f"{task}/{sample['doc_id']:08d}"]
            if task == "xc_mc":
                lls = [float(pair[0]) for pair in sample["filtered_resps"]]
                if not all(
                    math.isclose(a, b, abs_tol=1e-4) for a, b in zip(lls, row["choice_logprobs"], strict=True)
                ):
                    problems.append(f"{row['id']}: log-likelihoods {lls} != {row['choice_logprobs']}")
                names = ("acc", "acc_norm")
            else:
                text = sample["filtered_resps"][0]
                if text != row["generation"]:
                    problems.append(f"{row['id']}: generation {text!r} != {row['generation']!r}")
                names = ("exact_match",)
            for name in names:
                if float(sample[name]) != row[name]:
                    problems.append(f"{row['id']}: {name} {sample[name]} != {row[name]}")
    return problems


def run_ours(model: str, mc: Path, qa: Path, out: Path) -> dict:
    from jobs.eval.config import EvalConfig
    from jobs.eval.job import run
    from runner.config import build_config

    tree = {
        "model": {"path": model, "dtype": "float32"},
        "sampling": {"max_new_tokens": MAX_NEW, "stop": ["\n"]},
        "placement": {"replicas": 1},
        "output": {"path": str(out)},
        "tasks": [
            {
                "name": "xc_mc",
                "data": {"source": str(mc), "prompt": {"template": "{{ question }}"}},
                "scoring": {
                    "scorer": "multiple_choice",
                    "choices_column": "choices",
                    "target_column": "label",
                },
            },
            {
                "name": "xc_qa",
                "data": {"source": str(qa), "prompt": {"template": TEMPLATE}},
                "scoring": {"scorer": "exact_match", "target_column": "answer", "strip": False},
            },
        ],
    }
    document = run(build_config(tree, EvalConfig), overwrite=True)
    return {
        task: {k: v for k, v in entry.items() if k not in ("n", "errors")}
        for task, entry in document["tasks"].items()
    }


def crosscheck(work: Path, model: str = "demo:tiny-llama", lm_eval_args: str = "") -> tuple[bool, list[str]]:
    """Run both on the same tasks in `work`; (everything equal?, the report's lines)."""
    from runner.engine.demo_model import is_demo, resolve_demo

    work.mkdir(parents=True, exist_ok=True)
    path = resolve_demo(model) if is_demo(model) else model
    mc = write_jsonl(work / "mc.jsonl", [{"question": q, "choices": c, "label": g} for q, c, g in MC])
    questions = write_jsonl(work / "questions.jsonl", [{"question": q} for q in QA])
    answers = greedy_answers(path, questions)
    qa_rows = [
        {"question": q, "answer": a if i % 2 == 0 else "wrong"}
        for i, (q, a) in enumerate(zip(QA, answers, strict=True))
    ]
    qa = write_jsonl(work / "qa.jsonl", qa_rows)
    lm_eval_yaml(work, mc, qa)

    lm_eval_out = run_lm_eval(path, work, lm_eval_args)
    ours = run_ours(path, mc, qa, work / "runner-out")
    problems = rows_differ(lm_eval_out["samples"], work / "runner-out")
    lines = [f"row differs: {problem}" for problem in problems]
    ok = not problems
    lines.append(f"{'task':<8} {'metric':<20} {'lm-eval':>12} {'runner':>12}  equal")
    for task, metrics in lm_eval_out["metrics"].items():
        for name, value in metrics.items():
            mine = ours[task].get(name)
            same = mine is not None and math.isclose(float(value), float(mine), rel_tol=1e-9, abs_tol=1e-12)
            ok &= same
            lines.append(
                f"{task:<8} {name:<20} {float(value):>12.6f} {float(mine or math.nan):>12.6f}  {same}"
            )
    rows = sum(len(v) for v in lm_eval_out["samples"].values())
    lines.append(
        f"{rows} rows compared one by one (log-likelihoods, generations, scores): {len(problems)} differ"
    )
    return ok, lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="where data, task YAMLs and our output go (default: a temp dir)")
    parser.add_argument("--model", default="demo:tiny-llama", help="model.path (a demo model or a local dir)")
    parser.add_argument(
        "--lm-eval-args", default="", help="extra lm-eval model_args, e.g. add_bos_token=True"
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="crosscheck-"))
    ok, lines = crosscheck(work, args.model, args.lm_eval_args)
    print("\n".join(lines))
    print("AGREE" if ok else "DISAGREE")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
