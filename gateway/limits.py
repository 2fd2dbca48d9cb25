"""What the base model can take, known to the gateway without torch.

The context length comes from the model's ``config.json`` and prompt tokens
are counted with its ``tokenizer.json`` through the ``tokenizers`` library
(Rust, no torch), so a job that cannot fit is refused at submit with a clear
error instead of failing later on a worker.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from registry.errors import InvalidRequest, TooLarge
from registry.schemas import JobCreate

_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


@dataclass(frozen=True)
class ModelLimits:
    context: int | None  # positions the model supports; None when the config does not say
    tokenizer: Tokenizer | None  # None when the model ships no tokenizer.json

    @classmethod
    def from_model_dir(cls, path: Path) -> ModelLimits:
        context = None
        try:
            config = json.loads((path / "config.json").read_text())
            context = next((int(config[k]) for k in _CONTEXT_KEYS if k in config), None)
        except (OSError, ValueError, TypeError):
            pass
        tok_file = path / "tokenizer.json"
        tokenizer = Tokenizer.from_file(str(tok_file)) if tok_file.is_file() else None
        return cls(context=context, tokenizer=tokenizer)

    def prompt_tokens(self, prompt: str) -> int | None:
        if self.tokenizer is None:
            return None
        return len(self.tokenizer.encode(prompt, add_special_tokens=True).ids)


def check_job(body: JobCreate, *, limits: ModelLimits, max_prompt_chars: int, max_tokens_limit: int) -> int | None:
    """Refuse what settings or the model cannot take (the schema checked the rest). Returns the
    prompt's tokens as counted here (None without a tokenizer): what the job reserves on its
    tenant's token quota, with ``max_tokens``."""
    text = body.prompt_text()
    if not text.strip():
        raise InvalidRequest("prompt is empty; send the text to generate from.", code="prompt_empty")
    if len(text) > max_prompt_chars:
        raise TooLarge(
            f"prompt has {len(text)} characters; the limit is {max_prompt_chars} (LORAQ_MAX_PROMPT_CHARS).",
            code="prompt_too_long",
        )
    ceiling = max_tokens_limit if limits.context is None else min(max_tokens_limit, limits.context - 1)
    if body.max_tokens > ceiling:
        raise InvalidRequest(
            f"max_tokens {body.max_tokens} is above the limit of {ceiling} "
            "(LORAQ_MAX_TOKENS_LIMIT and the model's context length).",
            code="max_tokens_out_of_range",
        )
    used = limits.prompt_tokens(text)
    if limits.context is not None and used is not None and used + body.max_tokens > limits.context:
        raise InvalidRequest(
            f"prompt ({used} tokens) plus max_tokens ({body.max_tokens}) exceeds the model's context of "
            f"{limits.context} tokens; shorten the prompt or lower max_tokens.",
            code="context_length_exceeded",
        )
    return used
