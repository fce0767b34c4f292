"""Structured output: a JSON schema, a regex or a list of choices, enforced while decoding with xgrammar.

xgrammar (the grammar engine vLLM and SGLang use) compiles a constraint against the tokenizer's vocabulary
once; a `GrammarMatcher` per row then gives, before every token, the bitmask of tokens that keep the
output inside the grammar, and accepts the token chosen. The mask is applied to the logits before the
warpers and the draw (as vLLM does), so greedy and sampled rows alike only ever pick allowed tokens, and
EOS is allowed only where the grammar may end: a row that finishes with `stop` is complete and valid,
a row cut by its `max_new_tokens` says `length`.

Constraints come from the job (`sampling.json_schema` / `regex` / `choices`) or per row from a column
(`data.json_schema_column`); they are checked (compiled without a tokenizer) when the config loads or
the row is prepared, so a bad one is a one-line config error or an error row, never a failed batch.
Compiled grammars are cached per constraint for the engine's lifetime.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from runner import compat
from runner.engine.types import Constraint

if TYPE_CHECKING:  # the driver validates configs with this module and must not import torch
    import torch

KINDS = ("json_schema", "regex", "choices")


def load_schema(value: Any) -> str:
    """A schema given inline (mapping or JSON text) or as a file path -> canonical JSON text."""
    if isinstance(value, dict):
        return json.dumps(value)  # key order kept: it is the order of the output's properties
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a mapping, JSON text or the path of a schema file")
    text = value.strip()
    if not text.startswith("{"):
        path = os.path.expanduser(text)
        if not os.path.isfile(path):
            raise ValueError(f"not a JSON object and not a schema file: {text}")
        with open(path, encoding="utf-8") as f:
            text = f.read()
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"not valid JSON ({err})") from None
    if not isinstance(schema, dict):
        raise ValueError("a JSON schema must be an object")
    return json.dumps(schema)


def _grammar(constraint: Constraint):
    """The tokenizer-independent xgrammar Grammar of a constraint (raises on a bad one)."""
    import xgrammar as xgr

    if constraint.kind == "json_schema":
        # Compact JSON (no free whitespace between tokens): a model cannot spend its tokens on
        # whitespace that the grammar would otherwise allow without end (vLLM's disable_any_whitespace).
        return compat.json_strings_without_controls(
            xgr.Grammar.from_json_schema(constraint.spec, any_whitespace=False)
        )
    if constraint.kind == "regex":
        return xgr.Grammar.from_regex(constraint.spec)
    # choices: an EBNF alternation of string literals (JSON escapes are valid EBNF literals).
    return xgr.Grammar.from_ebnf("root ::= " + " | ".join(json.dumps(c) for c in json.loads(constraint.spec)))


@lru_cache(maxsize=1024)
def check(constraint: Constraint) -> str | None:
    """Why a constraint does not compile (one line), or None when it does."""
    try:
        _grammar(constraint)
    except (RuntimeError, ValueError) as err:
        lines = [line for line in str(err).splitlines() if line.strip()]
        reason = lines[0] if lines else type(err).__name__
        return reason.split(": ", 1)[-1] if reason.startswith("[") else reason
    return None


def make(kind: str, value: Any) -> Constraint:
    """The Constraint of a config value (schema text, regex, list of choices)."""
    spec = json.dumps(list(value)) if kind == "choices" else value
    return Constraint(kind, spec)


def check_config(kind: str, value: Any) -> Any:
    """For config validators: the value unchanged, or ValueError saying why it does not compile."""
    reason = check(make(kind, value))
    if reason:
        raise ValueError(f"does not compile: {reason}")
    return value


def job_constraint(sampling) -> Constraint | None:
    """The job-wide constraint of a SamplingConfig, if any."""
    kind = next((k for k in KINDS if getattr(sampling, k) is not None), None)
    return make(kind, getattr(sampling, kind)) if kind else None


def with_default(requests: list, sampling) -> list:
    """Requests without their own constraint get the job's (the same list when the job has none)."""
    job = job_constraint(sampling)
    if job is None:
        return requests
    return [r if r.constraint is not None else dataclasses.replace(r, constraint=job) for r in requests]


def row_constraint(value: Any, column: str) -> Constraint | str:
    """A row's schema column value -> Constraint, or the one-line reason it is unusable."""
    if isinstance(value, str) and not value.strip().startswith("{"):
        return f"column {column!r}: a row's schema must be a JSON object (file paths are config-only)"
    try:
        constraint = Constraint("json_schema", load_schema(value))
    except ValueError as err:
        return f"column {column!r}: {err}"
    reason = check(constraint)
    return f"column {column!r}: JSON schema does not compile: {reason}" if reason else constraint


def vocab_size(model) -> int:
    """Width of the model's logits (may exceed the tokenizer's length: padded embedding matrices)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return head.weight.shape[0] if head is not None else model.config.vocab_size


class Grammars:
    """Compiles constraints for one tokenizer (cached) and masks / advances rows' matchers."""

    def __init__(self, tokenizer, stop_ids: set[int], vocab: int):
        import xgrammar as xgr

        self._xgr = xgr
        self.vocab = vocab
        # The engine's own stop ids (EOS + sampling.stop_token_ids) are where a grammar may end.
        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab, stop_token_ids=sorted(stop_ids)
        )
        self.compiler = xgr.GrammarCompiler(info)
        self._compiled: dict[Constraint, Any] = {}
        self._lock = threading.Lock()

    def compiled(self, constraint: Constraint):
        """The compiled grammar of a constraint (compiled once per engine)."""
        with self._lock:
            if constraint not in self._compiled:
                self._compiled[constraint] = self.compiler.compile_grammar(_grammar(constraint))
            return self._compiled[constraint]

    def mask(self, logits: torch.Tensor, seqs: list) -> torch.Tensor:
        """Logits with every token the row's grammar forbids at -inf (rows without a constraint as they are)."""
        rows = [i for i, s in enumerate(seqs) if s.request.constraint is not None]
        if not rows:
            return logits
        bitmask = self._xgr.allocate_token_bitmask(len(seqs), self.vocab)
        for i in rows:
            seq = seqs[i]
            if seq.matcher is None:
                seq.matcher = self._xgr.GrammarMatcher(self.compiled(seq.request.constraint))
            seq.matcher.fill_next_token_bitmask(bitmask, i)
        logits = logits.clone()
        self._xgr.apply_token_bitmask_inplace(logits, bitmask.to(logits.device), indices=rows)
        return logits

    @staticmethod
    def accept(seqs: list, chosen: torch.Tensor) -> None:
        """Advance each constrained row's matcher by the token it drew."""
        tokens = None
        for i, seq in enumerate(seqs):
            if seq.matcher is not None and not seq.matcher.is_terminated():
                tokens = chosen.tolist() if tokens is None else tokens
                seq.matcher.accept_token(tokens[i])
