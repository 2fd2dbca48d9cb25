"""Errors that fail one job with a stable code (recorded on the job row)."""

from __future__ import annotations


class EngineError(Exception):
    """A row the engine cannot run; ``code`` lands in the job's ``error.code``."""

    code = "engine_error"


class AdapterLoadFailed(EngineError):
    code = "adapter_load_failed"


class PromptTooLong(EngineError):
    code = "prompt_too_long"
