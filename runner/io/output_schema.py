"""The output columns every job writes, their Arrow types and what they mean (docs/outputs.md).

One schema whatever `sampling.n` is: a column's type never depends on the config's numbers, only on
which optional columns it turns on. Names follow the field where the meaning is the same: OpenAI's
usage counts (`prompt_tokens`, `completion_tokens`) and `finish_reason`, Ray Data LLM's
`time_taken_llm` and `sampling_params`, vLLM's per-sample outputs (`samples`: index, text,
finish_reason, token_ids, ...). `generation` and `finish_reason` are the first sample's, so the
common one-sample job reads them as plain strings; `samples` holds all of them when n > 1 and is null
when n is 1 (the one sample is `generation`: the text is not stored twice).

`OUTPUT_SCHEMA_VERSION` is written to `_job.json`; a directory written under another version is not
resumed into (its part files would not share one schema).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow as pa

if TYPE_CHECKING:
    from runner.config import JobConfig
    from runner.engine import Request

OUTPUT_SCHEMA_VERSION = 2

# The columns the generation stage always writes, in order (`id` first, then the input's carried columns).
OUTPUT_COLUMNS = (
    "id",
    "prompt",
    "generation",
    "prompt_tokens",
    "completion_tokens",
    "finish_reason",
    "error",
    "error_kind",
    "replica",
    "time_taken_llm",
    "sampling_params",
    "samples",
)
# Columns that exist only when their option is on (jobs.generate.extra_outputs), in order.
OPTIONAL_COLUMNS = ("token_ids", "logprobs", "prompt_logprobs", "parsed")

SAMPLING_PARAMS = pa.struct(
    [
        ("max_tokens", pa.int64()),
        ("temperature", pa.float64()),
        ("top_p", pa.float64()),
        ("top_k", pa.int64()),
        ("min_p", pa.float64()),
        ("seed", pa.int64()),
        ("n", pa.int64()),
        ("repetition_penalty", pa.float64()),
        ("presence_penalty", pa.float64()),
        ("frequency_penalty", pa.float64()),
        ("stop", pa.list_(pa.string())),
        ("stop_token_ids", pa.list_(pa.int64())),
        ("logprobs", pa.int64()),
        ("constraint", pa.string()),
        ("adapter", pa.string()),
    ]
)

_TOP = pa.struct([("token_id", pa.int64()), ("token", pa.string()), ("logprob", pa.float64())])
TOKEN_LOGPROB = pa.struct([*_TOP, ("top", pa.list_(_TOP))])

# Per-sample optional values: the column's type for one sample (also the field in `samples`).
_PER_SAMPLE = {
    "token_ids": pa.list_(pa.int64()),
    "logprobs": pa.list_(TOKEN_LOGPROB),
    "parsed": pa.string(),
}


def optional_fields(cfg: JobConfig, logprobs: bool | None = None) -> list[pa.Field]:
    """The optional columns this config turns on, with their types (the first sample's values).
    `logprobs`: whether the logprobs column exists, for a job whose rows ask for logprobs themselves."""
    on = {
        "token_ids": cfg.output.token_ids,
        "logprobs": cfg.sampling.logprobs is not None if logprobs is None else logprobs,
        "prompt_logprobs": cfg.sampling.prompt_logprobs,
        "parsed": cfg.output.parse_json,
    }
    types = {**_PER_SAMPLE, "prompt_logprobs": pa.list_(pa.float64())}
    return [pa.field(name, types[name]) for name in OPTIONAL_COLUMNS if on[name]]


def sample_type(cfg: JobConfig | None = None, logprobs: bool | None = None) -> pa.DataType:
    """One entry of `samples`: the sample's own values, the per-sample optional ones included."""
    base = [
        ("index", pa.int64()),
        ("text", pa.string()),
        ("finish_reason", pa.string()),
        ("completion_tokens", pa.int64()),
    ]
    extra = [(f.name, f.type) for f in optional_fields(cfg, logprobs) if f.name in _PER_SAMPLE] if cfg else []
    return pa.struct(base + extra)


def result_fields(cfg: JobConfig | None = None, logprobs: bool | None = None) -> list[pa.Field]:
    """Types of the columns the stage always adds after `id` and the carried columns."""
    types = {
        "prompt": pa.string(),
        "generation": pa.string(),
        "prompt_tokens": pa.int64(),
        "completion_tokens": pa.int64(),
        "finish_reason": pa.string(),
        "error": pa.string(),
        "error_kind": pa.string(),
        "replica": pa.string(),
        "time_taken_llm": pa.float64(),
        "sampling_params": SAMPLING_PARAMS,
        "samples": pa.list_(sample_type(cfg, logprobs)),
    }
    return [pa.field(name, types[name]) for name in OUTPUT_COLUMNS[1:]]


def output_schema(
    cfg: JobConfig, carried: pa.Schema | None = None, logprobs: bool | None = None
) -> pa.Schema:
    """The whole schema of a generate job's part files: `id`, carried columns, results, optional ones."""
    carried_fields = list(carried) if carried is not None else []
    results = [*result_fields(cfg, logprobs), *optional_fields(cfg, logprobs)]
    return pa.schema([pa.field("id", pa.string()), *carried_fields, *results])


def sampling_params(cfg: JobConfig, request: Request) -> dict[str, Any]:
    """The sampling parameters a row was generated with: the job's, with the row's own overrides."""
    s, own = cfg.sampling, request.sampling
    return {
        "max_tokens": request.max_new_tokens,
        "temperature": _own(own, "temperature", s.temperature),
        "top_p": _own(own, "top_p", s.top_p),
        "top_k": s.top_k,
        "min_p": s.min_p,
        "seed": _own(own, "seed", s.seed),
        "n": _own(own, "n", s.n),
        "repetition_penalty": s.repetition_penalty,
        "presence_penalty": _own(own, "presence_penalty", s.presence_penalty),
        "frequency_penalty": _own(own, "frequency_penalty", s.frequency_penalty),
        "stop": list(_own(own, "stop", s.stop)),
        "stop_token_ids": list(s.stop_token_ids),
        "logprobs": _own(own, "logprobs", s.logprobs),
        "constraint": request.constraint.kind if request.constraint is not None else None,
        "adapter": request.adapter,
    }


def _own(own, name: str, default):
    value = getattr(own, name, None) if own is not None else None
    return default if value is None else value
