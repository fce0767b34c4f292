"""Failures inside a running job: replicas that die, bad rows, too many errors, reused output dirs.

One local Ray for the module, with 2 fake GPUs and a worker setup hook that can make a replica
`os._exit` in the middle of a batch, as a crash, an OOM kill or a lost spot node would.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import json
import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.generate.job import run
from jobs.generate.stage import GenerationStage
from runner.cli import main
from runner.config import build_config
from runner.errors import InputError, OutputError, ReplicaFailed
from runner.io.durable import filesystem
from runner.io.inputs import read_input
from runner.io.outputs import PartWriter, write_summary
from runner.io.summary import JobStats, build_summary
from runner.orchestration.job import Job
from tests.conftest import PROMPTS, write_jsonl

pytestmark = pytest.mark.slow  # whole jobs on a Ray with crashing replicas

CRASH_PLAN = "RUNNER_TEST_CRASH_PLAN"


def crash_if_planned(done: int) -> None:
    """Die like a killed process, at the start of a batch, when the plan file says so.

    'always': every batch. 'after-one': a batch that starts once this process has returned one (so
    its rows are in the output), in the first process to get there; a marker file keeps the
    restarted replica alive.
    """
    try:
        with open(os.environ[CRASH_PLAN]) as handle:
            mode = handle.read().strip()
    except (KeyError, OSError):
        return
    if mode == "always":
        os._exit(1)
    if mode == "after-one" and done >= 1:
        try:
            os.close(os.open(os.environ[CRASH_PLAN] + ".crashed", os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return
        os._exit(1)


def patch_stage(stage_class) -> None:
    """Every call of the stage first asks `crash_if_planned`."""
    call = stage_class.__call__
    returned = []  # a replica may run several batches at once (batching.batches_in_flight)

    def crashing_call(self, batch):
        crash_if_planned(len(returned))
        out = call(self, batch)
        returned.append(batch.num_rows)
        return out

    stage_class.__call__ = crashing_call


class _PatchStageOnImport(importlib.abc.MetaPathFinder):
    """Patches jobs.generate.stage when a worker imports it; Ray's other workers never pay for torch."""

    def find_spec(self, name, path, target=None):
        if name != "jobs.generate.stage":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            patch_stage(module.GenerationStage)

        spec.loader.exec_module = exec_module
        return spec


def install_crash_hook() -> None:
    """Ray worker setup hook (runs in every worker of the module's Ray)."""
    sys.meta_path.insert(0, _PatchStageOnImport())


@pytest.fixture(scope="module")
def crash_plan(tmp_path_factory):
    return tmp_path_factory.mktemp("crash") / "plan"


@pytest.fixture(scope="module", autouse=True)
def ray_with_crash_hook(crash_plan):
    ray = pytest.importorskip("ray")
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import this file
    ray.init(
        address="local",  # a fresh instance, never another session's cluster on this machine
        num_cpus=2,
        num_gpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        configure_logging=False,
        runtime_env={
            "worker_process_setup_hook": install_crash_hook,
            "env_vars": {CRASH_PLAN: str(crash_plan)},
        },
    )
    yield ray
    ray.shutdown()


@pytest.fixture
def plan(crash_plan):
    """Write the crash mode for one test; no crashes afterwards."""

    def write(mode: str) -> None:
        crash_plan.write_text(mode)

    yield write
    for path in (crash_plan, crash_plan.with_name("plan.crashed")):
        path.unlink(missing_ok=True)


def job_config(source, out, **sections):
    tree = {
        "model": {"path": "demo:tiny-llama", "dtype": "float32"},
        "data": {"source": str(source)},
        "sampling": {"max_new_tokens": 6},
        "batching": {"rows_per_task": 3},
        "placement": {"replicas": 1},
        "output": {"path": str(out), "rows_per_file": 4},
    }
    for name, values in sections.items():
        tree.setdefault(name, {}).update(values)
    return build_config(tree)


@pytest.fixture
def prompts(tmp_path):
    return write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS * 2])


def uninterrupted(cfg) -> dict[str, dict]:
    """The oracle: the stage run in this process over every row at once, keyed by id."""
    from jobs.generate.stage import GenerationStage

    return {r["id"]: r for r in GenerationStage(cfg)(read_input(cfg.data)).to_pylist()}


def output_rows(out) -> list[dict]:
    return pq.read_table(out).to_pylist()


def assert_same_generations(rows: list[dict], expected: dict[str, dict]) -> None:
    ids = [r["id"] for r in rows]
    assert sorted(ids) == sorted(expected), "every input row exactly once"
    for row in rows:
        want = expected[row["id"]]
        for column in ("generation", "finish_reason", "prompt_tokens", "completion_tokens", "error"):
            assert row[column] == want[column], f"row {row['id']} column {column}"


# --- replica failure -----------------------------------------------------------------------------


@pytest.mark.slow
def test_replica_that_dies_mid_batch_is_restarted_and_its_rows_redone(plan, crash_plan, prompts, tmp_path):
    plan("after-one")  # the first replica returns a batch, then dies in a later one
    cfg = job_config(prompts, tmp_path / "out")
    summary = run(cfg)

    assert crash_plan.with_name("plan.crashed").exists(), "a replica died in the middle of a batch"
    rows = output_rows(tmp_path / "out")
    assert_same_generations(rows, uninterrupted(cfg))
    assert len({r["replica"] for r in rows}) == 2, "rows come from the first replica and its restart"
    assert summary["replica_restarts"] == 1 and summary["status"] == "done"
    assert json.loads((tmp_path / "out" / "_job.json").read_text())["replica_restarts"] == 1


def test_replica_restarts_are_bounded(plan, prompts, tmp_path, capsys):
    plan("always")
    cfg = job_config(prompts, tmp_path / "out", retries={"replica_restarts": 1, "task_retries": 1})
    with pytest.raises(ReplicaFailed, match=r"retries: a replica kept dying \(replica_restarts=1") as failure:
        run(cfg)
    assert "\n" not in str(failure.value) and failure.value.exit_code == 1
    summary = json.loads((tmp_path / "out" / "_job.json").read_text())
    assert summary["status"] == "failed"
    assert summary["replica_restarts"] == 1, "restarted once, then the job gave up"


# --- bad rows ------------------------------------------------------------------------------------

LONG = "x " * 4200  # over tiny-llama's 4096-token context

BAD_ROWS = {  # row -> the reason its error names
    "missing prompt": ({"limit": 5}, "'prompt' is null"),
    "null prompt": ({"prompt": None, "limit": 5}, "'prompt' is null"),
    "empty prompt": ({"prompt": "  ", "limit": 5}, "prompt is empty"),
    "zero limit": ({"prompt": "Hello", "limit": 0}, "must be a positive integer"),
    "negative limit": ({"prompt": "Hello", "limit": -2}, "must be a positive integer"),
    "fractional limit": ({"prompt": "Hello", "limit": 2.5}, "must be a positive integer"),
}


def write_yaml(path, cfg) -> str:
    path.write_text(json.dumps(cfg.model_dump(mode="json")))  # JSON is YAML
    return str(path)


def test_bad_rows_become_error_rows_and_too_many_fail_the_job_after_writing(tmp_path, capsys):
    good = [{"prompt": p, "limit": 4} for p in PROMPTS[:4]]
    rows = good + [row for row, _ in BAD_ROWS.values()] + [{"prompt": LONG, "limit": 6}]
    source = write_jsonl(tmp_path / "rows.jsonl", rows)
    # The template reads a column some rows lack: those rows, not the job, fail.
    # data.overlong: truncate_left instead is tests/test_stage.py's.
    data = {"prompt": {"template": "{{ prompt }}"}, "max_new_tokens_column": "limit", "overlong": "error"}
    cfg = job_config(source, tmp_path / "out", data=data)
    config = write_yaml(tmp_path / "job.yaml", cfg)

    assert main(["run", config, "--max-error-rate", "0.25"]) == 1
    message = capsys.readouterr().err.strip().splitlines()[-1]
    errors = len(BAD_ROWS) + 1  # and the over-long prompt
    assert message.startswith(f"error: {errors} of {len(rows)} rows failed")

    out = {r["id"]: r for r in output_rows(tmp_path / "out")}
    ids = [f"{i:08d}" for i in range(len(rows))]
    assert sorted(out) == ids, "every row is written once, bad ones included"
    assert all(out[i]["error"] is None for i in ids[: len(good)])
    for i, (name, (_, reason)) in enumerate(BAD_ROWS.items(), start=len(good)):
        assert out[ids[i]]["finish_reason"] == "error", name
        assert reason in out[ids[i]]["error"] and "\n" not in out[ids[i]]["error"], name
    assert out[ids[-1]]["finish_reason"] == "error" and "> model context 4096" in out[ids[-1]]["error"]

    summary = json.loads((tmp_path / "out" / "_job.json").read_text())
    assert (summary["rows_error"], summary["rows_ok"]) == (errors, len(rows) - errors)
    assert summary["status"] == "done", "the job itself completed; only the error rate failed it"
    # A resumed run judges the whole output, earlier runs included: nothing to do, same verdict.
    assert main(["run", config, "--max-error-rate", "0.25"]) == 1
    assert main(["run", config, "--max-error-rate", "0.9"]) == 0


def test_a_streamed_input_with_duplicate_ids_gives_every_row_its_own_prompts_generation(tmp_path):
    """24 JSONL rows, each id twice with two different prompts, the two in different batches (the
    stream is not checked before the run). Earlier: IndexError, exit 1, no output. Now every row
    is written; of each id's two rows one has its own prompt's generation, the other is an error
    row naming the id."""
    prompts = [f"{PROMPTS[i % len(PROMPTS)][:40]} ({i})" for i in range(24)]
    source = write_jsonl(
        tmp_path / "dup.jsonl", [{"key": f"k{i % 12}", "prompt": p} for i, p in enumerate(prompts)]
    )
    cfg = job_config(source, tmp_path / "out", data={"id_column": "key"}, batching={"strategy": "padded"})
    summary = run(cfg)

    from jobs.generate.stage import GenerationStage

    alone = GenerationStage(cfg)(pa.table({"id": [f"u{i}" for i in range(24)], "prompt": prompts}))
    oracle = {r["prompt"]: r["generation"] for r in alone.to_pylist()}
    rows = output_rows(tmp_path / "out")
    assert sorted(r["prompt"] for r in rows) == sorted(prompts), "every input row once"
    for key in {f"k{i}" for i in range(12)}:
        mine = [r for r in rows if r["id"] == key]
        ok = [r for r in mine if r["error"] is None]
        bad = [r for r in mine if r["error"] is not None]
        assert len(ok) == len(bad) == 1, mine
        assert ok[0]["generation"] == oracle[ok[0]["prompt"]], "a row's generation is its own prompt's"
        assert bad[0]["generation"] is None and bad[0]["error_kind"] == "row"
        assert bad[0]["error"].startswith(f"duplicate id {key!r}")
    assert (summary["status"], summary["output_rows"], summary["output_rows_error"]) == ("done", 24, 12)
    assert (summary["rows_ok"], summary["rows_error"]) == (12, 12)
    assert summary["output_ids_distinct"] == 12


def test_a_whole_input_with_duplicate_ids_is_refused_before_anything_runs(tmp_path):
    """A table read whole (eval's tasks, `read_input`) is checked at start: one line naming the id."""
    source = write_jsonl(tmp_path / "dup.jsonl", [{"key": k, "prompt": "p"} for k in ("a", "b", "a")])
    cfg = job_config(source, tmp_path / "out", data={"id_column": "key"})
    with pytest.raises(InputError, match=r"data\.id_column: duplicate id 'a' at row 2 \(first at row 0\)"):
        Job(cfg, stage=GenerationStage, read=lambda c: read_input(c.data)).run()
    assert not (tmp_path / "out").exists()


# --- reusing an output directory -----------------------------------------------------------------


def test_overwrite_replaces_only_the_runners_own_files(prompts, tmp_path):
    out = tmp_path / "out"
    earlier = job_config(prompts, out, sampling={"max_new_tokens": 2}, data={"limit": 3})
    with PartWriter(*filesystem(str(out)), rows_per_file=2) as writer:  # what a run of `earlier` left
        writer.write(pa.table({"id": ["00000000", "00000001", "00000002"], "error": [None] * 3}))
    write_summary(*filesystem(str(out)), build_summary(earlier, JobStats(), status="done"))
    user_files = {"notes.txt": "mine", "part-1.parquet": "mine", "job.json": "{}", ".part-x.tmp": "mine"}
    for name, text in user_files.items():
        (out / name).write_text(text)
    (out / ".part-00099.parquet.tmp").write_text("a crash left this")

    cfg = job_config(prompts, out, data={"limit": 4})
    with pytest.raises(OutputError, match=r"different settings \(data\.limit, sampling\.max_new_tokens\)"):
        run(cfg)
    summary = run(cfg, overwrite=True)

    # The lease stays, released; part numbers are never reused (runner.io.catalogue.Catalogue.seal).
    # --overwrite moved the lease to a generation that seals nothing (runner.io.jobdir.JobDir.clear).
    runner_files = ["_job.json", "part-00002.parquet", "_lease.000003.json"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*user_files, *runner_files])
    assert all((out / name).read_text() == text for name, text in user_files.items())
    rows = pq.read_table(out / "part-00002.parquet").to_pylist()
    assert [r["id"] for r in rows] == [f"{i:08d}" for i in range(4)]
    assert summary["config"]["sampling"]["max_new_tokens"] == 6 and summary["output_rows"] == 4


def test_overwrite_deletes_the_summary_last(tmp_path):
    # An --overwrite killed half way leaves _job.json, so the directory is still known as the
    # runner's and the same command can finish the removal.
    with PartWriter(*filesystem(str(tmp_path)), rows_per_file=1) as writer:
        writer.write(pa.table({"id": ["00000000", "00000001"]}))
    write_summary(*filesystem(str(tmp_path)), {"config_hash": "earlier"})
    removed = PartWriter.remove_parts(*filesystem(str(tmp_path)))
    assert sorted(removed[:-1]) == ["part-00000.parquet", "part-00001.parquet"] and removed[-1] == "_job.json"
