"""The batch job's stage: the generate stage, with a request row's prompt and options taken from its
OpenAI body instead of the config's prompt and option columns.

Everything after the request is built is the generate stage's: the engine, bisecting a failing batch,
the output columns. Every generated row fills `samples` (a request chooses its own `n`) and has the
`logprobs` column (null unless the request asked for logprobs). A request that cannot run becomes an
error row whose `error` is a `RequestProblem` line (jobs.openai_batch.params), read back for the
error file.
"""

from __future__ import annotations

import json

from jobs.generate.prompts import RowError
from jobs.generate.stage import GenerationStage, _Row
from jobs.openai_batch.config import BatchConfig
from jobs.openai_batch.params import CHAT, Params, RequestProblem, parse
from runner.engine import Request
from runner.engine.types import Constraint
from runner.io.outputs import INPUT_ERROR


class BatchStage(GenerationStage):
    """Request rows (`jobs.openai_batch.requests`) in, generate's output rows out."""

    lists = True
    logprobs_column = True

    def __init__(
        self, cfg: BatchConfig, engine=None, cpu_threads: int | None = None, rows_ahead: int | None = None
    ):
        super().__init__(cfg, engine, cpu_threads, rows_ahead)
        self.base_names = cfg.base_names()
        self.adapters = set(cfg.model.adapters or {})

    def _prepare(self, row: dict) -> _Row:
        out = _Row(id=row["id"])
        if row.get(INPUT_ERROR) is not None:
            out.error = RequestProblem("invalid_request", None, row[INPUT_ERROR]).line()
            return out
        made = self._request(row)
        if isinstance(made, RequestProblem):
            out.error = made.line()
        else:
            out.prompt, out.request = made
        return out

    def _request(self, row: dict) -> tuple[str, Request] | RequestProblem:
        params = parse(row["url"], json.loads(row["body"]))
        if isinstance(params, RequestProblem):
            return params
        adapter = self._adapter(params.model)
        constraint = _constraint(params.response_format)
        for problem in (adapter, constraint):
            if isinstance(problem, RequestProblem):
                return problem
        prompt, ids = self._prompt(params)
        if isinstance(ids, RequestProblem):
            return ids
        limit = params.max_tokens or self.cfg.sampling.max_new_tokens
        fitted = self._fit_context(ids, limit)
        if isinstance(fitted, RowError):
            param = "messages" if params.endpoint == CHAT else "prompt"
            return RequestProblem("context_length_exceeded", param, fitted.reason)
        request = Request(row["id"], fitted, limit, params.sampling, constraint, adapter)
        return prompt, request

    def _adapter(self, model: str | None) -> str | None | RequestProblem:
        """The adapter a request's model names; None for the base model (vLLM serves LoRAs by name)."""
        if model in self.base_names:
            return None
        if model in self.adapters:
            return model
        known = ", ".join(sorted(self.base_names | self.adapters))
        return RequestProblem(
            "model_not_found", "model", f"the model {model!r} does not exist (here: {known})", 404
        )

    def _prompt(self, params: Params) -> tuple[str, list[int] | RequestProblem]:
        tokenizer = self.engine.tokenizer
        if params.endpoint != CHAT:
            if params.prompt_ids is not None:
                return tokenizer.decode(params.prompt_ids), params.prompt_ids
            return params.prompt, tokenizer(params.prompt, add_special_tokens=True)["input_ids"]
        if getattr(tokenizer, "chat_template", None) is None:
            return "", RequestProblem(
                "invalid_request", "messages", "the model's tokenizer has no chat template"
            )
        try:
            # transformers continues a final assistant message (prefill) with continue_final_message;
            # the generation then does not repeat it, as in vLLM's chat API.
            text = tokenizer.apply_chat_template(
                params.messages,
                tokenize=False,
                add_generation_prompt=not params.prefill,
                continue_final_message=params.prefill,
            )
        except Exception as err:  # noqa: BLE001 - a template's refusal (roles out of order, ...) is this request's
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            return "", RequestProblem(
                "invalid_value", "messages", f"the chat template refused them: {message}"
            )
        # The template wrote the special tokens it wants (BOS included).
        return text, tokenizer(text, add_special_tokens=False)["input_ids"]


def _constraint(schema: dict | None) -> Constraint | None | RequestProblem:
    """response_format's JSON schema through the engine's constrained decoding (xgrammar)."""
    if schema is None:
        return None
    from runner.engine import constraints

    try:
        made = Constraint("json_schema", constraints.load_schema(schema))
    except ValueError as err:
        return RequestProblem("invalid_value", "response_format", str(err))
    reason = constraints.check(made)
    if reason:
        return RequestProblem(
            "invalid_value", "response_format", f"the JSON schema does not compile: {reason}"
        )
    return made
