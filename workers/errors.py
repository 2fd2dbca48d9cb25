"""Errors that fail one job with a stable code (recorded on the job row)."""

from __future__ import annotations


class EngineError(Exception):
    """A row the engine cannot run; ``code`` lands in the job's ``error.code``."""

    code = "engine_error"


class AdapterLoadFailed(EngineError):
    code = "adapter_load_failed"


class PromptTooLong(EngineError):
    code = "prompt_too_long"


class AdapterRefused(EngineError):
    """An adapter this engine cannot serve in a mixed batch; ``code`` says which rule it breaks."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code
