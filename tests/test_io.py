"""Input reading, row ids, column checks, and the Parquet output directory."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import runner.io.inputs as inputs
from runner.config import DataConfig, PromptConfig
from runner.errors import InputError, OutputError
from runner.io import (
    SUMMARY_NAME,
    PartWriter,
    prepare_output_dir,
    read_input,
    read_summary,
    required_columns,
    write_summary,
)
from runner.io.durable import filesystem
from runner.io.jobdir import JobDir

ROWS = [{"prompt": f"q{i}", "lang": "en" if i % 2 else "fr", "n": i} for i in range(5)]


def cfg(source, **kw) -> DataConfig:
    return DataConfig(source=str(source), **kw)


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def jsonl(tmp_path):
    return write_jsonl(tmp_path / "data.jsonl", ROWS)


# --- formats ---------------------------------------------------------------------------------


def test_jsonl_reads_with_id_first(jsonl):
    table = read_input(cfg(jsonl))
    assert table.column_names == ["id", "prompt", "lang", "n"]
    assert table.schema.field("id").type == pa.string()
    assert table.column("prompt").to_pylist() == [r["prompt"] for r in ROWS]


def test_json_array_and_json_lines_in_dot_json(tmp_path):
    (tmp_path / "array.json").write_text(json.dumps(ROWS + [{"prompt": "late", "topic": "t"}]))
    lines = write_jsonl(tmp_path / "lines.json", ROWS)
    assert read_input(cfg(lines)).column("prompt").to_pylist() == [r["prompt"] for r in ROWS]
    table = read_input(cfg(tmp_path / "array.json"))
    assert table.column("prompt").to_pylist()[-1] == "late"
    assert table.column("topic").to_pylist() == [None] * 5 + ["t"]


def test_csv_and_parquet(tmp_path):
    (tmp_path / "d.csv").write_text("prompt,lang\nhello,en\nbonjour,fr\n")
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "d.parquet")
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "d.pq")
    assert read_input(cfg(tmp_path / "d.csv")).column("prompt").to_pylist() == ["hello", "bonjour"]
    assert read_input(cfg(tmp_path / "d.parquet")).num_rows == 5
    assert read_input(cfg(tmp_path / "d.pq")).num_rows == 5


def test_explicit_format_overrides_extension(tmp_path):
    path = write_jsonl(tmp_path / "data.txt", ROWS)
    assert read_input(cfg(path, format="jsonl")).num_rows == 5


def test_directory_reads_files_in_sorted_order(tmp_path):
    write_jsonl(tmp_path / "b.jsonl", [{"prompt": "b0", "extra": 1}])
    write_jsonl(tmp_path / "a.jsonl", [{"prompt": "a0"}, {"prompt": "a1"}])
    (tmp_path / "README.md").write_text("not data")
    table = read_input(cfg(tmp_path))
    assert table.column("prompt").to_pylist() == ["a0", "a1", "b0"]
    assert table.column("id").to_pylist() == ["00000000", "00000001", "00000002"]
    assert table.column("extra").to_pylist() == [None, None, 1]


def test_glob(tmp_path):
    write_jsonl(tmp_path / "x2.jsonl", [{"prompt": "second"}])
    write_jsonl(tmp_path / "x1.jsonl", [{"prompt": "first"}])
    write_jsonl(tmp_path / "other.jsonl", [{"prompt": "skipped"}])
    table = read_input(cfg(tmp_path / "x*.jsonl"))
    assert table.column("prompt").to_pylist() == ["first", "second"]


def test_save_to_disk_dataset_and_dataset_dict(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list(ROWS)
    ds.save_to_disk(str(tmp_path / "one"))
    datasets.DatasetDict({"train": ds, "test": ds.select([3, 1])}).save_to_disk(str(tmp_path / "dd"))
    assert read_input(cfg(tmp_path / "one")).num_rows == 5
    table = read_input(cfg(tmp_path / "dd", split="test"))
    assert table.column("prompt").to_pylist() == ["q3", "q1"]
    with pytest.raises(InputError, match=r"data\.split: split 'dev'.*splits: train, test"):
        read_input(cfg(tmp_path / "dd", split="dev"))


def test_hub_is_chosen_only_for_names_that_are_not_paths(tmp_path):
    assert inputs._resolve("org/dataset", "auto") == ("hub", [])
    with pytest.raises(InputError, match=r"data\.source: no such file or directory: .*missing\.jsonl"):
        read_input(cfg(tmp_path / "missing.jsonl"))


# --- read errors -----------------------------------------------------------------------------


def test_empty_glob_and_empty_directory(tmp_path):
    with pytest.raises(InputError, match=r"data\.source: no files match .*nope\*\.jsonl"):
        read_input(cfg(tmp_path / "nope*.jsonl"))
    with pytest.raises(InputError, match=r"data\.source: no data files .* in directory"):
        read_input(cfg(tmp_path))


def test_a_malformed_line_is_that_rows_input_error_naming_the_file_and_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{"prompt": \n')
    rows = read_input(cfg(tmp_path / "bad.jsonl")).to_pylist()
    assert rows[0]["prompt"] == "ok" and rows[0]["_input_error"] is None
    assert rows[1]["_input_error"].startswith("bad.jsonl line 2: not a JSON object")


def test_mixed_formats_and_unknown_extension(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", ROWS)
    (tmp_path / "b.csv").write_text("prompt\nx\n")
    with pytest.raises(InputError, match=r"data\.source: files of mixed formats \(csv, jsonl\)"):
        read_input(cfg(tmp_path / "*"))
    (tmp_path / "c.txt").write_text("x")
    with pytest.raises(InputError, match=r"data\.format: cannot tell the format of .*c\.txt"):
        read_input(cfg(tmp_path / "c.txt"))


# --- ids -------------------------------------------------------------------------------------


def test_position_ids_are_stable_and_zero_padded(jsonl):
    first, second = read_input(cfg(jsonl)), read_input(cfg(jsonl))
    assert first.column("id").to_pylist() == [f"0000000{i}" for i in range(5)]
    assert first.column("id").equals(second.column("id"))
    assert inputs._id_width(10**8) == 8 and inputs._id_width(10**8 + 1) == 9


def test_id_column_is_cast_and_renamed(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "uid": 7}, {"prompt": "b", "uid": 3}])
    table = read_input(cfg(path, id_column="uid"))
    assert table.column_names == ["id", "prompt"]
    assert table.column("id").to_pylist() == ["7", "3"]
    path = write_jsonl(tmp_path / "e.jsonl", [{"prompt": "a", "id": 1}])
    table = read_input(cfg(path, id_column="id"))
    assert table.column_names == ["id", "prompt"] and table.column("id").to_pylist() == ["1"]


def test_duplicate_and_null_ids_name_the_row(tmp_path):
    dup = write_jsonl(
        tmp_path / "dup.jsonl",
        [{"prompt": "a", "k": "x"}, {"prompt": "b", "k": "y"}, {"prompt": "c", "k": "x"}],
    )
    with pytest.raises(InputError, match=r"data\.id_column: duplicate id 'x' at row 2 \(first at row 0\)"):
        read_input(cfg(dup, id_column="k"))
    null = write_jsonl(tmp_path / "null.jsonl", [{"prompt": "a", "k": "x"}, {"prompt": "b", "k": None}])
    with pytest.raises(InputError, match=r"data\.id_column: row 1 has a null id in column 'k'"):
        read_input(cfg(null, id_column="k"))


def test_missing_id_column(jsonl):
    with pytest.raises(
        InputError, match=r"data\.id_column: column 'uid' not in input \(columns: prompt, lang, n\)"
    ):
        read_input(cfg(jsonl, id_column="uid"))


def test_input_id_column_needs_id_column_setting(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "prompt": "x"}])
    with pytest.raises(InputError, match=r"input has a column 'id': set data\.id_column: id"):
        read_input(cfg(path))


def test_limit_takes_first_rows_across_files(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", ROWS[:3])
    write_jsonl(tmp_path / "b.jsonl", ROWS[3:])
    table = read_input(cfg(tmp_path, limit=4))
    assert table.column("prompt").to_pylist() == ["q0", "q1", "q2", "q3"]
    assert table.column("id").to_pylist()[-1] == "00000003"


# --- columns ---------------------------------------------------------------------------------


def test_required_columns_from_template_carry_and_max_tokens():
    data = DataConfig(
        source="x.jsonl",
        prompt=PromptConfig(template="{% for i in range(2) %}{{ lang }}:{{ text }}{% endfor %}"),
        carry_columns=["topic"],
        max_new_tokens_column="budget",
    )
    assert required_columns(data) == ["lang", "text", "topic", "budget"]
    assert required_columns(DataConfig(source="x", prompt=PromptConfig(messages_column="msgs"))) == ["msgs"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt": PromptConfig(column="text")}, r"data\.prompt\.column: column 'text' not in input"),
        ({"prompt": PromptConfig(messages_column="m")}, r"data\.prompt\.messages_column: column 'm' not in"),
        ({"prompt": PromptConfig(template="{{ topic }}")}, r"data\.prompt\.template: column 'topic' not in"),
        (
            {"carry_columns": ["topic"]},
            r"data\.carry_columns: column 'topic' not in input \(columns: id, prompt, lang, n\)",
        ),
        ({"max_new_tokens_column": "budget"}, r"data\.max_new_tokens_column: column 'budget' not in"),
    ],
)
def test_missing_column_names_field_and_column(jsonl, kwargs, message):
    with pytest.raises(InputError, match=message):
        read_input(cfg(jsonl, **kwargs))


@pytest.mark.parametrize(
    ("carry", "message"),
    [
        ("generation", r"data\.carry_columns: 'generation' clashes with an output column"),
        ("id", r"data\.carry_columns: 'id' clashes with an output column"),
        ("prompt", r"data\.carry_columns: 'prompt' is always written"),
    ],
)
def test_carry_column_clashes(jsonl, carry, message):
    with pytest.raises(InputError, match=message):
        read_input(cfg(jsonl, carry_columns=[carry]))


def test_null_prompts_are_not_input_errors(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a"}, {"prompt": None}])
    assert read_input(cfg(path)).column("prompt").to_pylist() == ["a", None]


# --- outputs ---------------------------------------------------------------------------------


def result_table(start: int, count: int, error: str | None = None) -> pa.Table:
    ids = [f"{i:08d}" for i in range(start, start + count)]
    return pa.table({"id": ids, "generation": [f"g{i}" for i in ids], "error": [error] * count})


def part_files(out) -> list[str]:
    return sorted(os.listdir(out))


def test_writer_rolls_files_and_leaves_no_temp(tmp_path):
    out = tmp_path / "out"
    with PartWriter(*filesystem(str(out)), rows_per_file=10) as writer:
        for start in range(0, 25, 7):
            writer.write(result_table(start, min(7, 25 - start)))
    assert part_files(out) == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert [pq.read_metadata(out / n).num_rows for n in part_files(out)] == [10, 10, 5]
    assert writer.rows_written == 25 and len(writer.files_written) == 3


def test_writer_appends_after_existing_parts_with_one_schema(tmp_path):
    out = str(tmp_path / "out")
    with PartWriter(*filesystem(out), rows_per_file=4) as writer:
        writer.write(result_table(0, 4))  # all-null error column: must not pin the type to null
    with PartWriter(*filesystem(out), rows_per_file=4) as writer:
        writer.write(result_table(4, 2, error="boom"))
    assert part_files(out) == ["part-00000.parquet", "part-00001.parquet"]
    schemas = {pq.read_schema(os.path.join(out, n)) for n in part_files(out)}
    assert len(schemas) == 1
    assert set(JobDir(out).done_ids().to_pylist()) == {f"{i:08d}" for i in range(6)}


def test_writer_rejects_a_table_that_does_not_fit_the_schema(tmp_path):
    writer = PartWriter(
        *filesystem(str(tmp_path)),
        rows_per_file=10,
        schema=pa.schema([("id", pa.string()), ("n", pa.int64())]),
    )
    with pytest.raises(OutputError, match=r"output: column 'n' is string, cannot cast to int64"):
        writer.write(pa.table({"id": ["a"], "n": ["not a number"]}))
    with pytest.raises(OutputError, match=r"extra: \['x'\], missing: \['n'\]"):
        writer.write(pa.table({"id": ["a"], "x": [1]}))


def test_committed_ids_of_missing_directory(tmp_path):
    assert len(JobDir(str(tmp_path / "nothing")).done_ids()) == 0


def test_prepare_output_dir(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=r"output\.path: .*file is a file, not a directory"):
        prepare_output_dir(*filesystem(str(tmp_path / "file")), str(tmp_path / "file"))
    out = tmp_path / "a" / "b"
    prepare_output_dir(*filesystem(str(out)), str(out))
    for name in (".part-00003.parquet.tmp", "._job.json.tmp", ".mine.tmp", "notes.txt"):
        (out / name).write_text("x")
    prepare_output_dir(*filesystem(str(out)), str(out))
    assert part_files(out) == [".mine.tmp", "notes.txt"]


def test_summary_round_trip(tmp_path):
    assert read_summary(*filesystem(str(tmp_path))) is None
    write_summary(*filesystem(str(tmp_path)), {"rows": 3, "status": "ok"})
    write_summary(*filesystem(str(tmp_path)), {"rows": 5, "status": "ok"})
    assert read_summary(*filesystem(str(tmp_path))) == {"rows": 5, "status": "ok"}
    assert part_files(tmp_path) == [SUMMARY_NAME]


def test_output_directory_reads_with_pandas_pyarrow_and_datasets(tmp_path):
    pd = pytest.importorskip("pandas")
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "out"
    with PartWriter(*filesystem(str(out)), rows_per_file=3) as writer:
        writer.write(result_table(0, 3))
        writer.write(result_table(3, 2, error="boom"))
    write_summary(*filesystem(str(out)), {"rows": 5})
    (out / ".part-00009.parquet.tmp").write_text("crash leftover")
    expected = [f"{i:08d}" for i in range(5)]
    assert sorted(pd.read_parquet(out)["id"]) == expected
    assert sorted(pq.read_table(out).column("id").to_pylist()) == expected
    loaded = datasets.load_dataset(
        "parquet", data_files=f"{out}/*.parquet", split="train", cache_dir=str(tmp_path / "c")
    )
    assert sorted(loaded["id"]) == expected and loaded.num_rows == 5
