"""Build each row's prompt text: a column, a Jinja template over columns, or chat messages.

A row that cannot produce a prompt yields a `RowError` with a one-line reason instead of raising,
so one bad row becomes one error row and never stops the job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jinja2.exceptions import SecurityError

from jobs.generate import chat
from runner.config import PromptConfig
from runner.config.template import ENV, check_template_safe, template_variables
from runner.errors import first_line


@dataclass(frozen=True)
class RowError:
    """Why a row produced no prompt (or no generation)."""

    reason: str


class PromptBuilder:
    """Renders prompts for rows according to one PromptConfig."""

    def __init__(self, cfg: PromptConfig, tokenizer: Any = None):
        self.cfg = cfg
        self.tokenizer = tokenizer
        if cfg.template:
            check_template_safe(cfg.template)
        self.template = ENV.from_string(cfg.template) if cfg.template else None
        self.variables = set(template_variables(cfg.template)) if cfg.template else set()

    def build(self, row: dict) -> str | RowError:
        """The prompt text for one row, or the reason there is none."""
        try:
            if self.template is not None:
                text = self._from_template(row)
            elif self.cfg.messages_column:
                text = self._from_messages(row.get(self.cfg.messages_column))
            else:
                text = row.get(self.cfg.column)
            if not self.cfg.messages_column:
                text = chat.finish(text, self.cfg, self.tokenizer)  # data.prompt.chat / assistant_prefix
        except SecurityError as err:
            return RowError(f"data.prompt.template: refused by the sandbox: {first_line(err)}")
        except Exception as err:  # noqa: BLE001 - whatever a template or tokenizer raises is this row's error
            return RowError(f"prompt: {type(err).__name__}: {first_line(err)}")
        return _check_text(text, self.cfg)

    def _from_template(self, row: dict) -> str:
        nulls = sorted(k for k in self.variables if row.get(k) is None)
        if nulls:
            raise ValueError(f"template column {nulls[0]!r} is null")
        # The row as one mapping, not keywords: a column named `self` would clash with render's own.
        return self.template.render(row)

    def _from_messages(self, messages: Any) -> str:
        if not isinstance(messages, list) or not messages:
            raise ValueError(f"column {self.cfg.messages_column!r} must be a non-empty list of messages")
        for m in messages:
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ValueError("each message needs 'role' and 'content'")
        return chat.render(messages, self.cfg, self.tokenizer)


def _check_text(text: Any, cfg: PromptConfig) -> str | RowError:
    where = f"column {cfg.column!r}" if cfg.column else "prompt"
    if text is None:
        return RowError(f"{where} is null")
    if not isinstance(text, str):
        return RowError(f"{where} is {type(text).__name__}, not text")
    if not text.strip():
        return RowError(f"{where} is empty")
    return text
