"""Output columns that exist only when their option is on: `token_ids`, `logprobs`, `prompt_logprobs`,
`parsed` (their names: `runner.io.outputs.OPTIONAL_COLUMNS`). A job that uses none of them writes
exactly the columns it wrote before.

- `token_ids` (output.token_ids): the generated token ids (what `generation` decodes from).
- `logprobs` (sampling.logprobs: K): per generated token {token_id, token, logprob, top: [{token_id,
  token, logprob}] x K}, of the model's raw distribution (runner.engine.logprobs).
- `prompt_logprobs` (sampling.prompt_logprobs): per prompt token its logprob (the first is null).
- `parsed` (output.parse_json): the generation parsed as JSON, written back as compact JSON text; null
  when it does not parse or, for a row with a JSON schema, does not validate against it.
With n > 1 the per-sample columns (all but prompt_logprobs) are lists, one entry per sample.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from runner.config import JobConfig

_TOP = pa.struct([("token_id", pa.int64()), ("token", pa.string()), ("logprob", pa.float64())])
_TOKEN = pa.struct([*_TOP, ("top", pa.list_(_TOP))])


def _per_sample(kind: pa.DataType, n: int) -> pa.DataType:
    return pa.list_(kind) if n > 1 else kind


def fields(cfg: JobConfig, lists: bool | None = None, logprobs: bool | None = None) -> list[pa.Field]:
    """The optional columns this config turns on, with their types. `lists` / `logprobs` replace what
    the config says (n > 1; sampling.logprobs set) for a job whose rows choose their own n and logprobs."""
    n = (2 if lists else 1) if lists is not None else cfg.sampling.n
    logprobs = cfg.sampling.logprobs is not None if logprobs is None else logprobs
    out = []
    if cfg.output.token_ids:
        out.append(pa.field("token_ids", _per_sample(pa.list_(pa.int64()), n)))
    if logprobs:
        out.append(pa.field("logprobs", _per_sample(pa.list_(_TOKEN), n)))
    if cfg.sampling.prompt_logprobs:
        out.append(pa.field("prompt_logprobs", pa.list_(pa.float64())))
    if cfg.output.parse_json:
        out.append(pa.field("parsed", _per_sample(pa.string(), n)))
    return out


class ExtraColumns:
    """Appends the optional columns to the stage's output table."""

    def __init__(
        self, cfg: JobConfig, tokenizer: Any, lists: bool | None = None, logprobs: bool | None = None
    ):
        self.cfg = cfg
        self.fields = fields(cfg, lists, logprobs)
        self.lists = cfg.sampling.n > 1 if lists is None else lists
        self.tokenizer = tokenizer

    def append(self, table: pa.Table, rows: list, done: dict) -> pa.Table:
        """`table` (one output row per entry of `rows`) with the enabled columns added."""
        for f in self.fields:
            values = [self._value(f.name, row, done.get(row.id)) for row in rows]
            table = table.append_column(f, pa.array(values, f.type))
        return table

    def _value(self, name: str, row, completion) -> Any:
        if row.error or completion is None or completion.error:
            return None
        if name == "prompt_logprobs":
            return completion.prompt_logprobs
        if name == "logprobs" and completion.logprobs is None:  # a row that did not ask for them
            return None
        per_sample = {
            "token_ids": lambda j: completion.token_ids[j],
            "logprobs": lambda j: self._logprobs(completion.logprobs[j]),
            "parsed": lambda j: parse(completion.texts[j], row.request.constraint),
        }[name]
        values = [per_sample(j) for j in range(len(completion.token_ids))]
        return values if self.lists else values[0]

    def _logprobs(self, tokens: list) -> list[dict]:
        def entry(t) -> dict:
            return {
                "token_id": t.token_id,
                "token": self.tokenizer.decode([t.token_id]),
                "logprob": t.logprob,
            }

        return [{**entry(chosen), "top": [entry(t) for t in top]} for chosen, top in tokens]


def parse(text: str, constraint) -> str | None:
    """Compact JSON of `text` when it parses (and validates against the row's JSON schema), else None."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None
    if constraint is not None and constraint.kind == "json_schema":
        import jsonschema

        if not jsonschema.Draft202012Validator(json.loads(constraint.spec)).is_valid(value):
            return None
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
