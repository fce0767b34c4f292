"""A committed output row -> its line of the OpenAI batch output (or error) file.

The one place that knows both the job's output columns and OpenAI's response shapes: a renamed
column changes here only. The bodies are built as the `openai` package's own types
(`openai.types.chat.ChatCompletion`, `openai.types.Completion`) and dumped from them, so every line
is what OpenAI's client parses. The line around the body follows OpenAI's batch output format
(`BatchRequestOutput` of OpenAI's API spec: `id`, `custom_id`, `response` {`status_code`,
`request_id`, `body`}, `error`), which the package has no type for: `OutputLine` below.

A failed request is a response with a 4xx / 5xx status and OpenAI's error body
{"error": {message, type, param, code}}, as OpenAI's and vLLM's batch runners write them.
"""

from __future__ import annotations

import hashlib
from typing import Any

from openai.types import Completion, CompletionChoice, CompletionUsage
from openai.types.chat import ChatCompletion, ChatCompletionMessage, ChatCompletionTokenLogprob
from openai.types.chat.chat_completion import Choice, ChoiceLogprobs
from openai.types.chat.chat_completion_token_logprob import TopLogprob
from openai.types.completion_choice import Logprobs
from pydantic import BaseModel, ConfigDict

from jobs.openai_batch.params import CHAT, problem_of

# The output columns a line is made from (runner.io.outputs, jobs.generate.extra_outputs; url/model/line are
# the request file's, carried: jobs.openai_batch.requests).
COLUMNS = (
    "id", "url", "model", "line", "generation", "finish_reason", "prompt_tokens", "completion_tokens",
    "error", "error_kind", "samples", "logprobs",
)  # fmt: skip
FINISH_REASONS = {"stop": "stop", "length": "length"}  # ours -> OpenAI's vocabulary


class Response(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status_code: int
    request_id: str
    body: dict


class LineError(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str | None
    message: str


class OutputLine(BaseModel):
    """One line of OpenAI's batch output / error file."""

    model_config = ConfigDict(extra="forbid")
    id: str
    custom_id: str
    response: Response | None
    error: LineError | None


def _digest(*parts: Any) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:24]


def is_error(row: dict) -> bool:
    return row.get("error") is not None


def line(row: dict, created: int) -> dict:
    """The output or error file line of one committed row (`created`: when it was committed, Unix s)."""
    request_id = f"req_{_digest('request', row['line'], row['id'])}"
    if is_error(row):
        status, body = error_body(row)
    else:
        status, body = 200, completion_body(row, created)
    out = OutputLine(
        id=f"batch_req_{_digest('line', row['line'], row['id'])}",
        custom_id=row["id"],
        response=Response(status_code=status, request_id=request_id, body=body),
        error=None,
    )
    return out.model_dump(mode="json")


def error_body(row: dict) -> tuple[int, dict]:
    """(status code, OpenAI's error body) of an error row."""
    problem = problem_of(row["error"])
    if problem is not None:
        kind = "invalid_request_error" if problem.status < 500 else "server_error"
        error = {"message": problem.message, "type": kind, "param": problem.param, "code": problem.code}
        return problem.status, {"error": error}
    if row.get("error_kind") == "engine":  # the infrastructure's failure: a retry may succeed
        error = {"message": row["error"], "type": "server_error", "param": None, "code": "server_error"}
        return 500, {"error": error}
    error = {
        "message": row["error"],
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_request",
    }
    return 400, {"error": error}


def completion_body(row: dict, created: int) -> dict:
    """The `chat.completion` / `text_completion` body of a successful row, built as openai's types."""
    usage = CompletionUsage(
        prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"],
        total_tokens=row["prompt_tokens"] + row["completion_tokens"],
    )
    # Every sample is in `samples` (the batch stage fills it for one-sample rows too; docs/outputs.md).
    first = {
        "text": row["generation"],
        "finish_reason": row["finish_reason"],
        "logprobs": row.get("logprobs"),
    }
    samples = row.get("samples") or [first]
    texts, reasons = [s["text"] for s in samples], [s["finish_reason"] for s in samples]
    logprobs = [s.get("logprobs") for s in samples]
    common = {"id": "", "created": created, "model": row["model"] or "", "usage": usage}
    if row["url"] == CHAT:
        choices = [
            Choice(
                index=i,
                message=ChatCompletionMessage(role="assistant", content=text),
                finish_reason=FINISH_REASONS.get(reason, "stop"),
                logprobs=_chat_logprobs(tokens),
            )
            for i, (text, reason, tokens) in enumerate(zip(texts, reasons, logprobs, strict=True))
        ]
        common["id"] = f"chatcmpl-{_digest('chat', row['line'], row['id'])}"
        body = ChatCompletion(object="chat.completion", choices=choices, **common)
    else:
        choices = [
            CompletionChoice(
                index=i,
                text=text,
                finish_reason=FINISH_REASONS.get(reason, "stop"),
                logprobs=_text_logprobs(tokens),
            )
            for i, (text, reason, tokens) in enumerate(zip(texts, reasons, logprobs, strict=True))
        ]
        common["id"] = f"cmpl-{_digest('text', row['line'], row['id'])}"
        body = Completion(object="text_completion", choices=choices, **common)
    return body.model_dump(mode="json", exclude_unset=True)


def _chat_logprobs(tokens: list[dict] | None) -> ChoiceLogprobs | None:
    if tokens is None:
        return None

    def top(t: dict) -> TopLogprob:
        return TopLogprob(token=t["token"], bytes=list(t["token"].encode()), logprob=t["logprob"])

    content = [
        ChatCompletionTokenLogprob(
            token=t["token"],
            bytes=list(t["token"].encode()),
            logprob=t["logprob"],
            top_logprobs=[top(alt) for alt in t["top"]],
        )
        for t in tokens
    ]
    return ChoiceLogprobs(content=content)


def _text_logprobs(tokens: list[dict] | None) -> Logprobs | None:
    if tokens is None:
        return None
    offsets, at = [], 0
    for t in tokens:  # character offsets of each token in the generated text
        offsets.append(at)
        at += len(t["token"])
    return Logprobs(
        tokens=[t["token"] for t in tokens],
        token_logprobs=[t["logprob"] for t in tokens],
        top_logprobs=[{alt["token"]: alt["logprob"] for alt in t["top"]} for t in tokens],
        text_offset=offsets,
    )
