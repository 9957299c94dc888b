"""Prompt rendering: the tokenizer's chat template when it has one, else a plain template.

Plain template (documented in docs/data.md), for tokenizers without a chat template:

    System: <system content>\\n\\n      (only when there is a system message)
    User: <content>\\n\\n
    Assistant: <content>\\n\\n          (earlier assistant turns, if any)
    Assistant:                         (the generation prompt; the model continues after it)
"""

from __future__ import annotations

from typing import Any

PLAIN_ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}


def render_plain(messages: list[dict]) -> str:
    parts = [f"{PLAIN_ROLE_NAMES.get(m['role'], m['role'].capitalize())}: {m['content']}\n\n" for m in messages]
    return "".join(parts) + "Assistant:"


def render_prompt(record: dict, tokenizer: Any = None) -> str:
    """The text the policy continues from, for a normalized record."""
    messages = record.get("messages") or [{"role": "user", "content": record["prompt"]}]
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return render_plain(messages)
