"""Chat messages -> one prompt, with the base model's own chat template.

The template is the tokenizer's (``tokenizer_config.json`` or
``chat_template.jinja``), rendered by transformers exactly as
``apply_chat_template`` does for Hugging Face users, with the assistant's
generation prompt appended. A base without one gets :data:`DEFAULT_CHAT_TEMPLATE`
(ChatML, the most common format; documented in the README). The engine
tokenizes the rendered text like any prompt, so a template that writes the
BOS token itself would get it twice: it is stripped here when the tokenizer
adds one anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from registry.schemas import ChatMessage
from workers.errors import EngineError

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class ChatTemplateFailed(EngineError):
    code = "chat_template_error"


def render(tokenizer: Any, messages: Sequence[ChatMessage]) -> str:
    turns = [m.model_dump(exclude_none=True) for m in messages]
    template = getattr(tokenizer, "chat_template", None) or DEFAULT_CHAT_TEMPLATE
    try:
        text = tokenizer.apply_chat_template(turns, chat_template=template, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # jinja raises what the template raises (e.g. "roles must alternate")
        raise ChatTemplateFailed(f"the base model's chat template refused these messages: {exc}") from exc
    bos = tokenizer.bos_token
    if bos and isinstance(text, str) and text.startswith(bos) and _adds_bos(tokenizer):
        text = text[len(bos) :]
    return str(text)


def _adds_bos(tokenizer: Any) -> bool:
    ids = tokenizer("x")["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id
