"""Streaming input: the planned Ray Data read gives exactly the rows and ids of a full read.

Chunks are made tiny here so every file splits into several read tasks, as a large input does.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from runner.config import DataConfig
from runner.errors import InputError
from runner.io import chunks, stream
from runner.io.inputs import read_input
from runner.io.outputs import INPUT_ERROR


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    import ray

    ray.init(
        address="local",
        num_cpus=1,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
    )
    yield
    ray.shutdown()


@pytest.fixture(autouse=True, params=["workers", "driver"])
def tiny_chunks(monkeypatch, request):
    monkeypatch.setattr(chunks, "CHUNK_BYTES", 64)
    # Both ways of reading give the same rows: read tasks, and a small input read on the driver.
    monkeypatch.setattr(stream, "SMALL_INPUT_ROWS", 0 if request.param == "workers" else 10**6)


def streamed(cfg: DataConfig, done: list[str] | None = None) -> list[dict]:
    planned = stream.open_input(cfg)
    rows = planned.dataset(pa.array(done, pa.string()) if done else None, 3).take_all()
    return sorted(rows, key=lambda r: r["id"])


def full(cfg: DataConfig) -> list[dict]:
    rows = read_input(cfg).to_pylist()
    return sorted(({**r, INPUT_ERROR: r.get(INPUT_ERROR)} for r in rows), key=lambda r: r["id"])


def test_jsonl_files_stream_with_the_ids_of_a_full_read(tmp_path):
    for part in range(3):
        lines = [json.dumps({"prompt": f"p{part}-{i}", "n": i}) for i in range(7)]
        lines.insert(3, "")  # a blank line is not a row, in either reader
        (tmp_path / f"in-{part}.jsonl").write_text("\n".join(lines) + "\n")
    cfg = DataConfig(source=str(tmp_path))
    planned = stream.open_input(cfg)
    assert len(planned.chunks) > 3 and planned.total_rows == 21
    rows = streamed(cfg)
    assert rows == full(cfg)
    assert [r["id"] for r in rows] == [f"{i:08d}" for i in range(21)]
    limited = DataConfig(source=str(tmp_path), limit=10)
    assert streamed(limited) == full(limited)


def test_committed_ids_are_dropped_in_the_read_tasks(tmp_path):
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(12)))
    cfg = DataConfig(source=str(tmp_path / "in.jsonl"))
    done = [f"{i:08d}" for i in range(0, 12, 2)]
    assert [r["id"] for r in streamed(cfg, done)] == [f"{i:08d}" for i in range(1, 12, 2)]


def test_a_jsonl_column_that_changes_type_in_a_later_chunk_is_that_rows_error(tmp_path):
    rows = [{"prompt": f"p{i}", "limit": 4} for i in range(8)] + [{"prompt": "late", "limit": "lots"}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n")
    out = streamed(DataConfig(source=str(tmp_path / "in.jsonl")))
    assert out[8]["limit"] is None
    assert out[8][INPUT_ERROR] == "column 'limit' is str 'lots', other rows hold number"
    assert out[9][INPUT_ERROR].startswith("in.jsonl line 10: not a JSON object")
    assert all(r[INPUT_ERROR] is None and r["limit"] == 4 for r in out[:8])


def test_parquet_row_groups_and_csv_and_an_id_column(tmp_path):
    table = pa.table({"key": [f"k{i}" for i in range(10)], "prompt": [f"p{i}" for i in range(10)]})
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=3)
    cfg = DataConfig(source=str(tmp_path / "in.parquet"), id_column="key")
    assert len(stream.open_input(cfg).chunks) == 4
    assert streamed(cfg) == full(cfg)
    (tmp_path / "in.csv").write_text("key,prompt\n007,a\nNA,b\n")
    cfg = DataConfig(source=str(tmp_path / "in.csv"), id_column="key")
    assert [r["id"] for r in streamed(cfg)] == ["007", "NA"]


def test_a_null_id_becomes_an_error_row_named_by_its_position(tmp_path):
    rows = [{"key": "a", "prompt": "x"}, {"key": None, "prompt": "y"}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = streamed(DataConfig(source=str(tmp_path / "in.jsonl"), id_column="key"))
    assert out[1]["id"] == "input-error-row-00000001"
    assert out[1][INPUT_ERROR] == "column 'key' (data.id_column) is null"


def test_planning_checks_columns_from_the_first_file(tmp_path):
    (tmp_path / "in.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    with pytest.raises(InputError, match=r"^data\.prompt\.column: column 'prompt' not in input"):
        stream.open_input(DataConfig(source=str(tmp_path / "in.jsonl")))
