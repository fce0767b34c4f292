"""An OpenAI request body -> what the engine runs: the prompt (chat messages or completion text) and the
request's own options (max tokens, sampling, n, stop, penalties, logprobs, response_format, model).

The body is validated with the `openai` package's own request types (`CompletionCreateParams` of
`/v1/chat/completions` and `/v1/completions`, TypedDicts validated by pydantic), so a value OpenAI
would refuse is refused here with the same field name. What that leaves to us: which fields we run
(SUPPORTED), which are harmless metadata (IGNORED), and that every other field is this request's error
naming it, never a silent drop (tools, audio, images, logit_bias, ...). vLLM's `run-batch` does the
same per request: an unsupported or invalid request is one error line, the others run.

A problem is a `RequestProblem`; `jobs.generate.prompts.RowError` carries it through the stage as one line,
`problem_of(text)` reads it back for the error file (status code, OpenAI's error `code` and `param`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Any

from pydantic import TypeAdapter, ValidationError

from runner.engine.types import RowSampling

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
ENDPOINTS = (CHAT, COMPLETIONS)

# Fields that change what is generated and that we honour exactly.
SUPPORTED = {
    CHAT: {
        "messages", "model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed",
        "stop", "n", "presence_penalty", "frequency_penalty", "logprobs", "top_logprobs",
        "response_format", "stream",
    },
    COMPLETIONS: {
        "prompt", "model", "max_tokens", "temperature", "top_p", "seed", "stop", "n",
        "presence_penalty", "frequency_penalty", "logprobs", "echo", "best_of", "stream",
    },
}  # fmt: skip
# Fields that describe the request (billing, caching, moderation ids) and change no token.
IGNORED = {"user", "metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier"}


@dataclass(frozen=True)
class RequestProblem:
    """Why a request cannot run: OpenAI's error `code`, the body field (`param`), a message."""

    code: str
    param: str | None
    message: str
    status: int = 400

    def line(self) -> str:
        """One line for the stage's `error` column (read back by `problem_of`)."""
        return f"{self.code} ({self.status}) {self.param or '-'}: {self.message}"


_LINE = re.compile(r"^(?P<code>[a-z_]+) \((?P<status>\d{3})\) (?P<param>\S+): (?P<message>.*)$", re.S)


def problem_of(text: str) -> RequestProblem | None:
    """The problem a `RequestProblem.line()` describes; None for any other error text."""
    m = _LINE.match(text or "")
    if m is None:
        return None
    param = None if m["param"] == "-" else m["param"]
    return RequestProblem(m["code"], param, m["message"], int(m["status"]))


@dataclass(frozen=True)
class Params:
    """A valid request, ready for the stage: either `messages` (chat) or `prompt` / `prompt_ids`."""

    endpoint: str
    model: str | None
    messages: list[dict] | None = None
    prefill: bool = False  # chat: the last message is the assistant's, continued (not repeated)
    prompt: str | None = None
    prompt_ids: list[int] | None = None
    max_tokens: int | None = None
    sampling: RowSampling | None = None
    response_format: dict | None = None  # the JSON schema the output must match


@cache
def _adapter(endpoint: str) -> TypeAdapter:
    if endpoint == CHAT:
        from openai.types.chat.completion_create_params import CompletionCreateParamsNonStreaming
    else:
        from openai.types.completion_create_params import CompletionCreateParamsNonStreaming
    return TypeAdapter(CompletionCreateParamsNonStreaming)


@cache
def _known_fields(endpoint: str) -> frozenset[str]:
    if endpoint == CHAT:
        from openai.types.chat.completion_create_params import CompletionCreateParamsBase
    else:
        from openai.types.completion_create_params import CompletionCreateParamsBase
    return frozenset(CompletionCreateParamsBase.__annotations__)


def parse(endpoint: str, body: Any) -> Params | RequestProblem:
    """Check a request body against OpenAI's types and our supported fields; the run-ready request."""
    if endpoint not in ENDPOINTS:
        return RequestProblem("invalid_url", "url", f"{endpoint!r} is not one of {', '.join(ENDPOINTS)}")
    if not isinstance(body, dict):
        return RequestProblem("invalid_request", "body", f"must be a JSON object, not {type(body).__name__}")
    problem = _field_problem(endpoint, body)
    if problem is not None:
        return problem
    checked = _checked(endpoint, body)
    if isinstance(checked, RequestProblem):
        return checked
    problem = _range_problem(checked)
    if problem is not None:
        return problem
    return _chat(checked) if endpoint == CHAT else _completion(checked)


def _field_problem(endpoint: str, body: dict) -> RequestProblem | None:
    for name in body:
        if name in SUPPORTED[endpoint] or name in IGNORED:
            continue
        if name in _known_fields(endpoint):
            return RequestProblem("unsupported_parameter", name, f"{name!r} is not supported by this server")
        return RequestProblem("unknown_parameter", name, f"unrecognized request argument {name!r}")
    if body.get("stream"):
        return RequestProblem("unsupported_value", "stream", "a batch request cannot stream")
    return None


def _checked(endpoint: str, body: dict) -> dict | RequestProblem:
    """The body as OpenAI's types validate it. Strict, as OpenAI's API is ("0.5" is not a number);
    the types' `Iterable` fields validate lazily, as they are iterated: `_drain` iterates them all."""
    try:
        return _drain(_adapter(endpoint).validate_python(body, strict=True), ())
    except _Invalid as err:
        return _problem(err.error, err.where)
    except ValidationError as err:
        return _problem(err.errors()[0], ())


class _Invalid(Exception):
    def __init__(self, error: dict, where: tuple):
        self.error, self.where = error, where


def _drain(value: Any, where: tuple) -> Any:
    if isinstance(value, dict):
        return {k: _drain(v, (*where, k)) for k, v in value.items()}
    if isinstance(value, str | int | float | bool | type(None)):
        return value
    out = []
    try:
        for i, item in enumerate(value):
            out.append(_drain(item, (*where, i)))
    except ValidationError as err:
        raise _Invalid(err.errors()[0], where) from None
    return out


def _problem(first: dict, where: tuple) -> RequestProblem:
    param = _param((*where, *first["loc"]))
    if first["type"] == "missing":
        return RequestProblem("missing_required_parameter", param, f"{param!r} is required")
    message = first["msg"]
    if param.startswith("messages") and first["type"] in ("literal_error", "union_tag_invalid"):
        message = "not a valid message (role must be system, developer, user, assistant or tool)"
    return RequestProblem("invalid_value", param, message)


def _param(loc: tuple) -> str:
    # Union branches appear in pydantic's location as type names (`ChatCompletionUserMessageParam`):
    # OpenAI names the field path only.
    parts = [str(p) for p in loc if not (isinstance(p, str) and p[:1].isupper())]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "body"


def _sampling(body: dict, top_k: int | None) -> RowSampling | None:
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop
    values = {
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "seed": body.get("seed"),
        "n": body.get("n"),
        "stop": tuple(s for s in stops if s) if stops is not None else None,
        "presence_penalty": body.get("presence_penalty"),
        "frequency_penalty": body.get("frequency_penalty"),
        "logprobs": top_k,
    }
    values = {k: v for k, v in values.items() if v is not None}
    return RowSampling(**values) if values else None


def _range_problem(body: dict) -> RequestProblem | None:
    """The bounds OpenAI documents (its types carry no bounds)."""
    bounds = {
        "temperature": (0, 2),
        "top_p": (0, 1),
        "presence_penalty": (-2, 2),
        "frequency_penalty": (-2, 2),
        "n": (1, 128),
        "max_tokens": (1, None),
        "max_completion_tokens": (1, None),
        "top_logprobs": (0, 20),
    }
    for name, (low, high) in bounds.items():
        value = body.get(name)
        if value is not None and (value < low or (high is not None and value > high)):
            where = f">= {low}" + (f" and <= {high}" if high is not None else "")
            return RequestProblem("invalid_value", name, f"{value!r} is out of range: must be {where}")
    if body.get("top_p") == 0:
        return RequestProblem("invalid_value", "top_p", "0 is out of range: must be > 0 and <= 1")
    return None


def _chat(body: dict) -> Params | RequestProblem:
    messages = []
    for i, message in enumerate(body["messages"]):
        made = _message(i, message)
        if isinstance(made, RequestProblem):
            return made
        messages.append(made)
    if not messages:
        return RequestProblem("invalid_value", "messages", "must hold at least one message")
    if body.get("top_logprobs") is not None and not body.get("logprobs"):
        return RequestProblem("invalid_value", "top_logprobs", "needs logprobs: true")
    top_k = (body.get("top_logprobs") or 0) if body.get("logprobs") else None
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    return Params(
        endpoint=CHAT,
        model=body.get("model"),
        messages=messages,
        prefill=messages[-1]["role"] == "assistant",
        max_tokens=limit,
        sampling=_sampling(body, top_k),
        response_format=_response_format(body.get("response_format")),
    )


def _message(i: int, message: dict) -> dict | RequestProblem:
    role = message["role"]
    where = f"messages[{i}]"
    if role in ("tool", "function") or message.get("tool_calls") or message.get("function_call"):
        return RequestProblem("unsupported_parameter", where, "tool and function calls are not supported")
    for name in ("audio", "refusal"):
        if message.get(name) is not None:
            return RequestProblem("unsupported_parameter", f"{where}.{name}", f"{name!r} is not supported")
    content = message.get("content")
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if part.get("type") != "text":
                kind = part.get("type")
                return RequestProblem(
                    "unsupported_parameter", f"{where}.content[{j}]", f"{kind!r} content is not supported"
                )
            texts.append(part["text"])
        content = "".join(texts)
    out = {"role": "system" if role == "developer" else role, "content": content or ""}
    if message.get("name"):
        out["name"] = message["name"]
    return out


def _response_format(value: dict | None) -> dict | None:
    if value is None or value.get("type") == "text":
        return None
    if value["type"] == "json_object":
        return {"type": "object"}
    return value["json_schema"].get("schema") or {}


def _completion(body: dict) -> Params | RequestProblem:
    if body.get("echo"):
        return RequestProblem("unsupported_value", "echo", "echo: true is not supported")
    best_of = body.get("best_of")
    if best_of is not None and best_of != body.get("n", 1):
        return RequestProblem("unsupported_value", "best_of", "best_of other than n is not supported")
    logprobs = body.get("logprobs")
    if logprobs is not None and not 0 <= logprobs <= 5:
        return RequestProblem(
            "invalid_value", "logprobs", f"{logprobs!r} is out of range: must be >= 0 and <= 5"
        )
    prompt = _prompt(body["prompt"])
    if isinstance(prompt, RequestProblem):
        return prompt
    text, ids = (prompt, None) if isinstance(prompt, str) else (None, prompt)
    return Params(
        endpoint=COMPLETIONS,
        model=body.get("model"),
        prompt=text,
        prompt_ids=ids,
        max_tokens=body.get("max_tokens"),
        sampling=_sampling(body, logprobs),
    )


def _prompt(prompt: Any) -> str | list[int] | RequestProblem:
    """One prompt: text, or token ids; a list of several prompts is one request per prompt in OpenAI's
    API (choices by index), which a one-row-per-request job does not model."""
    if isinstance(prompt, list) and len(prompt) == 1 and not isinstance(prompt[0], int):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            return RequestProblem("invalid_value", "prompt", "is empty")
        return prompt
    if prompt and all(isinstance(t, int) for t in prompt):
        return list(prompt)
    return RequestProblem(
        "unsupported_value",
        "prompt",
        "several prompts in one request are not supported: one request per prompt",
    )
