"""The whole generate job through Ray Data: a replica pool on fake GPUs, Parquet out."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from jobs.generate.job import run
from runner.config import build_config

pytestmark = pytest.mark.slow  # whole jobs on a Ray with fake GPUs


@pytest.fixture(scope="module")
def ray_two_gpus():
    """One local Ray for the module, offering 2 (fake) GPUs on this CPU machine."""
    ray = pytest.importorskip("ray")
    ray.init(
        address="local",
        num_cpus=2,
        num_gpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        configure_logging=False,
    )
    yield ray
    ray.shutdown()


def job_config(prompts_file, out, **sections):
    tree = {
        "model": {"path": "demo:tiny-llama", "dtype": "float32"},
        "data": {
            "source": str(prompts_file),
            "id_column": "key",
            "carry_columns": ["topic"],
            "max_new_tokens_column": "limit",
        },
        "sampling": {"max_new_tokens": 8},
        "batching": {"rows_per_task": 3},
        "output": {"path": str(out), "rows_per_file": 5},
    }
    for name, values in sections.items():
        tree.setdefault(name, {}).update(values)
    return build_config(tree)


def test_two_replicas_on_fake_gpus_write_every_row_once(ray_two_gpus, prompts_file, tmp_path):
    # One row per Ray Data batch, one batch in flight per replica: Ray Data may mark the second
    # replica ready a scheduling round after the first, and with bigger batches the first could
    # take the whole (12-row) input before then; 12 one-row batches leave work for both.
    cfg = job_config(
        prompts_file,
        tmp_path / "out",
        placement={"gpus_per_replica": 1},
        batching={"rows_per_task": 1, "batches_in_flight": 1},
    )
    summary = run(cfg)

    table = pq.read_table(tmp_path / "out").to_pylist()
    source = [json.loads(line) for line in prompts_file.read_text().splitlines()]
    assert sorted(r["id"] for r in table) == sorted(r["key"] for r in source)
    by_id = {r["id"]: r for r in table}
    for row in source:
        out = by_id[row["key"]]
        assert out["topic"] == row["topic"]
        assert out["finish_reason"] in ("stop", "length") and out["error"] is None
        assert out["completion_tokens"] <= row["limit"]
    by_replica = {}
    for r in table:
        by_replica.setdefault(r["replica"], []).append(r["id"])
    gpus = {name.split("gpus=")[1] for name in by_replica}
    assert gpus == {"0", "1"}, f"each replica should hold its own GPU, saw {by_replica}"
    assert summary["replicas"] == 2 and summary["rows_ok"] == len(source)
    assert len(list((tmp_path / "out").glob("part-*.parquet"))) >= 2  # rows_per_file=5 rolls files


def test_job_json_records_config_versions_and_totals(ray_two_gpus, prompts_file, tmp_path):
    cfg = job_config(prompts_file, tmp_path / "out", placement={"replicas": 1})
    run(cfg)
    summary = json.loads((tmp_path / "out" / "_job.json").read_text())
    table = pq.read_table(tmp_path / "out")
    assert summary["config_hash"] == cfg.result_hash()
    assert summary["config"]["model"]["path"] == "demo:tiny-llama"
    assert summary["versions"]["transformers"] and summary["versions"]["ray"]
    assert summary["generated_tokens"] == sum(table.column("completion_tokens").to_pylist())
    assert summary["prompt_tokens"] == sum(table.column("prompt_tokens").to_pylist())
    assert summary["rows_ok"] + summary["rows_error"] == table.num_rows


def test_cpu_replicas_share_the_cluster_cores_and_gpu_replicas_keep_torch_default(ray_two_gpus):
    from runner.orchestration.cluster import Pool, cpu_threads

    assert cpu_threads(Pool(replicas=1, gpus_per_replica=0, cpus_per_replica=0.5)) == 2
    assert cpu_threads(Pool(replicas=2, gpus_per_replica=0, cpus_per_replica=0.5)) == 1
    assert cpu_threads(Pool(replicas=2, gpus_per_replica=1, cpus_per_replica=0.5)) is None


def test_retry_errors_regenerates_engine_error_rows_and_never_duplicates_an_id(
    ray_two_gpus, prompts_file, tmp_path
):
    import pyarrow as pa

    cfg = job_config(prompts_file, tmp_path / "out", placement={"replicas": 1})
    run(cfg)
    first = {r["id"]: r for r in pq.read_table(tmp_path / "out").to_pylist()}
    # What an OOM at a batch of one (engine) and a bad row (row) leave behind, in the first part.
    part = tmp_path / "out" / "part-00000.parquet"
    table = pq.read_table(part)
    ids = table.column("id").to_pylist()
    kinds = {ids[0]: "engine", ids[1]: "engine", ids[2]: "row"}
    errors = pa.array([("out of memory" if i in kinds else None) for i in ids], pa.string())
    table = table.set_column(table.schema.get_field_index("error"), "error", errors)
    table = table.set_column(
        table.schema.get_field_index("error_kind"), "error_kind", pa.array([kinds.get(i) for i in ids])
    )
    pq.write_table(table, part)

    summary = run(cfg, retry_errors=True)
    rows = pq.read_table(tmp_path / "out").to_pylist()
    assert sorted(r["id"] for r in rows) == sorted(first) and len(rows) == len(first)  # each id once
    by_id = {r["id"]: r for r in rows}
    assert summary["rows_retried"] == 2 and summary["rows_ok"] == 2
    for regenerated in (ids[0], ids[1]):
        assert by_id[regenerated]["error"] is None
        assert by_id[regenerated]["generation"] == first[regenerated]["generation"]
    assert by_id[ids[2]]["error_kind"] == "row"  # a row's own error would fail again: kept
    assert summary["output_rows_error"] == 1 and summary["output_ids_distinct"] == len(first)
