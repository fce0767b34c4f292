"""Output columns that exist only when their option is on: `token_ids`, `logprobs`, `prompt_logprobs`,
`parsed`. A job that uses none of them writes exactly the base columns (runner.io.output_schema).

- `token_ids` (output.token_ids): the generated token ids (what `generation` decodes from).
- `logprobs` (sampling.logprobs: K): per generated token {token_id, token, logprob, top: [{token_id,
  token, logprob}] x K}, of the model's raw distribution (runner.engine.logprobs).
- `prompt_logprobs` (sampling.prompt_logprobs): per prompt token its logprob (the first is null).
- `parsed` (output.parse_json): the generation parsed as JSON, written back as compact JSON text; null
  when it does not parse or, for a row with a JSON schema, does not validate against it. Text, not an
  Arrow struct: rows may carry different schemas (data.json_schema_column), one Parquet column has one
  type, and JSON Schema's unions, optional and additional properties have no faithful Arrow type;
  pandas (`json.loads`), duckdb (`parsed::JSON`) and Spark (`from_json`) read it directly.
The top-level columns are the first sample's; with n > 1 every sample's are fields of `samples`.
"""

from __future__ import annotations

import json
from typing import Any

from runner.config import JobConfig
from runner.io.output_schema import optional_fields


class ExtraColumns:
    """The enabled optional values of one row: per sample, and for the prompt."""

    def __init__(self, cfg: JobConfig, tokenizer: Any, logprobs: bool | None = None):
        """`logprobs`: whether the logprobs column exists (default: sampling.logprobs is set)."""
        self.fields = optional_fields(cfg, logprobs)
        self.names = [f.name for f in self.fields]
        self.tokenizer = tokenizer

    def per_sample(self, row, completion) -> list[dict[str, Any]]:
        """For each sample of a completed row, its enabled per-sample values (empty dicts for none)."""
        getters = {
            "token_ids": lambda j: completion.token_ids[j],
            # A row that did not ask for logprobs (its own options) has none.
            "logprobs": lambda j: self._logprobs(completion.logprobs[j]) if completion.logprobs else None,
            "parsed": lambda j: parse(completion.texts[j], row.request.constraint),
        }
        wanted = [name for name in self.names if name in getters]
        return [{name: getters[name](j) for name in wanted} for j in range(len(completion.token_ids))]

    def columns(self, ok: bool, samples: list[dict[str, Any]], completion) -> dict[str, Any]:
        """The row's optional column values: the first sample's, and the prompt's logprobs."""
        out = {}
        for name in self.names:
            if not ok:
                out[name] = None
            elif name == "prompt_logprobs":
                out[name] = completion.prompt_logprobs
            else:
                out[name] = samples[0][name]
        return out

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
