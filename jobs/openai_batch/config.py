"""The `batch` job's config: a generate job whose rows are the requests of an OpenAI batch file.

`batch:` names the request file, the results files and their order; `model`, `sampling` (the values of
fields a request leaves out), `batching`, `placement`, `output` (the job directory of Parquet parts,
the resumable source of truth), `retries` and `ray` are the generate job's sections. `data` is not
set by the user: it is the request file read as `jobs.openai_batch.requests` reads it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from jobs.openai_batch.requests import CARRIED, ID_COLUMN
from runner.config import DataConfig, JobConfig
from runner.config.base import _Strict


class BatchSection(_Strict):
    """The OpenAI batch files in and out."""

    input: str = Field(..., min_length=1, description="the request file (JSONL; local path or pyarrow URI)")
    output_file: str = Field(
        ..., min_length=1, description="where the OpenAI batch output file is written (local path or URI)"
    )
    error_file: str | None = Field(
        None,
        description="where failed requests' lines go (OpenAI's error file); unset: into output_file "
        "with the others (vLLM run-batch's behaviour)",
    )
    order: Literal["input", "any"] = Field(
        "input", description="output lines in request-file order (vLLM), or as committed (OpenAI: any order)"
    )
    served_model_name: list[str] = Field(
        default_factory=list,
        description="names a request's body.model may use for the base model, besides model.path",
    )


def default_job_dir(output_file: str) -> str:
    """The job directory next to the output file: `results.jsonl` -> `results.parts`."""
    stem = output_file[: -len(".jsonl")] if output_file.endswith(".jsonl") else output_file
    return f"{stem}.parts"


class BatchConfig(JobConfig):
    """A job over the requests of an OpenAI batch file."""

    batch: BatchSection = Field(..., description="the OpenAI batch request file in, the results files out")
    data: DataConfig | None = Field(
        None, description="not set: the requests of batch.input, read as an OpenAI batch file"
    )

    @model_validator(mode="before")
    @classmethod
    def _requests_are_the_data(cls, tree: Any) -> Any:
        """`data` is the request file; the job directory defaults to one beside the output file."""
        if not isinstance(tree, dict) or not isinstance(tree.get("batch"), dict):
            return tree  # pydantic names what is missing
        batch = tree["batch"]
        data = {
            "source": batch.get("input"),
            "format": "jsonl",
            "id_column": ID_COLUMN,
            "prompt": {"column": "body"},
            "carry_columns": list(CARRIED),
        }
        given = tree.get("data")
        if given is not None and (not isinstance(given, dict) or given.get("source") != data["source"]):
            raise ValueError("data: a batch job reads batch.input; set batch.input, not data")
        output = dict(tree.get("output") or {})
        if "path" not in output and isinstance(batch.get("output_file"), str):
            output["path"] = default_job_dir(batch["output_file"])
        return {**tree, "data": data, "output": output}

    def base_names(self) -> set[str]:
        """The names a request's body.model may give the base model."""
        return {self.model.path, *self.batch.served_model_name}
