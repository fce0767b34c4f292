"""Chat prompts from plain text: a column or template's text as the user message, an optional system
message, the chat template's extra variables, and an assistant prefix that starts the answer.

Rendered by the tokenizer's own chat template (`apply_chat_template`), so the prompt is what the model
was trained on. `assistant_prefix` is appended to the rendered prompt, after the template's opening of
the assistant turn: the model continues from it (prefill), and the generation does not repeat it.
"""

from __future__ import annotations

from typing import Any

from runner.config import PromptConfig


def render(messages: list[dict], cfg: PromptConfig, tokenizer: Any) -> str:
    """A list of messages (with cfg.system first, unless they start with one) through the chat template."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("the tokenizer has no chat template")
    if cfg.system is not None and not (messages and messages[0].get("role") == "system"):
        messages = [{"role": "system", "content": cfg.system}, *messages]
    text = tokenizer.apply_chat_template(
        messages,
        tokenize=False,
        add_generation_prompt=cfg.add_generation_prompt,
        **cfg.chat_template_kwargs,
    )
    return text + (cfg.assistant_prefix or "")


def finish(text: Any, cfg: PromptConfig, tokenizer: Any) -> Any:
    """A column / template prompt: wrapped as a user message when cfg.chat, and the assistant prefix
    appended. Anything but non-empty text is returned as is, for the prompt checks to report."""
    if not isinstance(text, str) or not text.strip():
        return text
    if cfg.chat:
        return render([{"role": "user", "content": text}], cfg, tokenizer)
    return text + (cfg.assistant_prefix or "")
