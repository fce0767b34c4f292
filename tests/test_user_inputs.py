"""Inputs as users have them: CSV option columns as text, a spreadsheet's byte-order mark, a JSON Lines
file whose first line is a long document, an empty or binary file, non-finite numbers. Both readers
(the full read and the streamed plan with its read tasks) give the same answer."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from jobs.generate.prompts import RowError
from jobs.generate.row_options import RowOptions
from runner.config import DataConfig, build_config, load_config
from runner.errors import ConfigError, InputError
from runner.io import stream
from runner.io.inputs import read_input

OPTIONS = {
    "temperature_column": "temperature",
    "top_p_column": "top_p",
    "seed_column": "seed",
    "max_new_tokens_column": "limit",
}


def streamed_rows(cfg: DataConfig) -> list[dict]:
    """The rows the read tasks produce, run here in-process (no Ray needed for a plan without done ids)."""
    planned = stream.open_input(cfg)
    plan = stream._Plan(cfg, planned.columns, 8, None, planned.fs)
    return [
        row
        for chunk in planned.chunks
        for block in stream._read_chunk(plan, chunk)
        for row in block.to_pylist()
    ]


def options_for(**sampling) -> RowOptions:
    tree = {"model": {"path": "demo:tiny-llama"}, "data": {"source": "x.csv", **OPTIONS}}
    return RowOptions(build_config({**tree, "sampling": {"max_new_tokens": 9, **sampling}}))


def test_csv_option_columns_parse_numeric_text_and_an_empty_cell_keeps_the_jobs_value(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text(
        "prompt,temperature,top_p,seed,limit\na,0.7,0.9,3,5\nb,,,,\nc, 1e-1 ,1,7.0,64.0\nd,warm,,,\ne,,,,0\n"
    )
    cfg = DataConfig(source=str(path), **OPTIONS)
    rows = read_input(cfg).to_pylist()
    assert [r["temperature"] for r in rows] == ["0.7", "", " 1e-1 ", "warm", ""]  # CSV cells stay text
    options = options_for()
    got = [options.for_row(r) for r in rows]
    assert got[0]["sampling"].temperature == 0.7 and got[0]["sampling"].top_p == 0.9
    assert got[0]["sampling"].seed == 3 and options.max_new_tokens(rows[0]) == 5
    assert "sampling" not in got[1] and options.max_new_tokens(rows[1]) == 9  # empty = the job's value
    assert got[2]["sampling"].temperature == pytest.approx(0.1) and got[2]["sampling"].seed == 7
    assert options.max_new_tokens(rows[2]) == 64
    assert got[3] == RowError("column 'temperature' is 'warm': expected a float")
    assert options.max_new_tokens(rows[4]).reason == (
        "column 'limit' is '0': max_new_tokens must be a positive integer"
    )
    assert streamed_rows(cfg) == [{**r, "_input_error": None} for r in rows]


@pytest.mark.parametrize("value", [float("inf"), float("nan"), "inf", "-Infinity", "nan"])
def test_non_finite_per_row_values_are_that_rows_error(value):
    options = options_for()
    got = options.for_row({"temperature": value})
    assert isinstance(got, RowError) and "column 'temperature'" in got.reason
    assert "must be a finite number" in got.reason


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_non_finite_config_values_are_refused_naming_the_key(tmp_path, value):
    path = tmp_path / "job.yaml"
    path.write_text(
        f"model: {{path: demo:tiny-llama}}\ndata: {{source: x.jsonl}}\nsampling: {{temperature: {value}}}\n"
    )
    with pytest.raises(ConfigError, match=r"^sampling.temperature: .*finite"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"^sampling.top_p: .*finite"):
        load_config(path, ["sampling.temperature=0.5", f"sampling.top_p={value}"])


def test_a_csv_with_a_byte_order_mark_keeps_its_first_column_as_text(tmp_path):
    path = tmp_path / "sheet.csv"
    path.write_text("qid,prompt\n007,a\nNA,b\n", encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    cfg = DataConfig(source=str(path), id_column="qid")
    assert read_input(cfg).column("id").to_pylist() == ["007", "NA"]
    assert [r["id"] for r in streamed_rows(cfg)] == ["007", "NA"]


def test_a_jsonl_whose_first_line_is_over_a_mebibyte_reads(tmp_path):
    path = tmp_path / "long.jsonl"
    long = "word " * (600 << 10)  # 3 MiB: over pyarrow's 1 MiB parse block and the plan's head read
    path.write_text(
        json.dumps({"qid": "a", "prompt": long}) + "\n" + json.dumps({"qid": "b", "prompt": "x"}) + "\n"
    )
    cfg = DataConfig(source=str(path), id_column="qid")
    table = read_input(cfg)
    assert table.column("id").to_pylist() == ["a", "b"] and table.column("prompt")[0].as_py() == long
    assert "_input_error" not in table.column_names
    rows = streamed_rows(cfg)
    assert [(r["id"], r["prompt"] == long, r["_input_error"]) for r in rows] == [
        ("a", True, None),
        ("b", False, None),
    ]


@pytest.mark.parametrize("reader", [read_input, stream.open_input])
@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.jsonl", b"", r"^data.source: .*empty.jsonl is empty: no rows to run$"),
        ("blank.jsonl", b"\n\n  \n", r"^data.source: .*blank.jsonl is empty: no rows to run$"),
        ("header.csv", b"prompt,x\n", r"^data.source: .*header.csv is empty: no rows to run$"),
        ("zero.csv", b"", r"^data.source: .*zero.csv is empty: no rows to run$"),
        ("bom-only.csv", b"\xef\xbb\xbf", r"^data.source: .*bom-only.csv is empty: no rows to run$"),
        (
            "binary.jsonl",
            bytes(range(256)) * 8,
            r"^data.source: .*binary.jsonl is not text \(a NUL byte at offset 0\)$",
        ),
        (
            "latin1.csv",
            "prompt\ncaf\xe9 au lait\n".encode("latin-1"),
            r"is not UTF-8 text \(byte 0xe9 at offset 10\)$",
        ),
        (
            "words.jsonl",
            b"hello\nworld\n",
            r"^data.source: .*words.jsonl is not JSON Lines: its first lines hold no JSON object",
        ),
    ],
)
def test_empty_and_unreadable_inputs_say_exactly_that(tmp_path, reader, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        reader(DataConfig(source=str(path)))


@pytest.mark.parametrize("ext", ["jsonl", "csv"])
def test_an_empty_shard_among_others_is_no_error(tmp_path, ext):
    (tmp_path / f"a.{ext}").write_bytes(b"\xef\xbb\xbf\n" if ext == "csv" else b"")
    (tmp_path / f"b.{ext}").write_text('{"prompt": "p"}\n' if ext == "jsonl" else "prompt\np\n")
    cfg = DataConfig(source=str(tmp_path))
    assert read_input(cfg).column("prompt").to_pylist() == ["p"]
    assert [r["prompt"] for r in streamed_rows(cfg)] == ["p"]
    assert stream.open_input(cfg).columns.names[0] == "prompt"


def test_row_options_keep_the_values_they_already_had():
    options = options_for()
    got = options.for_row({"temperature": 0.5, "top_p": None, "seed": 4.0, "limit": pa.scalar(3).as_py()})
    assert got["sampling"].temperature == 0.5 and got["sampling"].seed == 4
    assert options.for_row({"seed": True}) == RowError("column 'seed' is True: expected an int")
