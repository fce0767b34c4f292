"""Input datasets in, Parquet part files out."""

from runner.io.inputs import read_input, required_columns, template_variables
from runner.io.outputs import (
    OUTPUT_COLUMNS,
    SUMMARY_NAME,
    PartWriter,
    prepare_output_dir,
    read_summary,
    write_summary,
)

__all__ = [
    "OUTPUT_COLUMNS",
    "SUMMARY_NAME",
    "PartWriter",
    "prepare_output_dir",
    "read_input",
    "read_summary",
    "required_columns",
    "template_variables",
    "write_summary",
]
