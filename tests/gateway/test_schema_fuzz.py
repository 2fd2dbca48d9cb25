"""Schemathesis against the gateway's own OpenAPI schema: no 5xx and no response that breaks its
declared schema, for generated requests (a bounded number per operation, positive and negative).

The synchronous OpenAI endpoints wait for workers, which this test does not run; their request
mapping is tested in ``tests/registry/test_openai_schemas.py`` and they run for real in
``tests/e2e/test_openai_client.py``.
"""

from __future__ import annotations

from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from tests.gateway.test_bad_input import ADMIN, make_gateway

SKIPPED = ("/v1/completions", "/v1/chat/completions")
EXAMPLES = 12  # per operation; every one is a real request through the ASGI app
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]


def test_no_operation_answers_5xx_or_breaks_its_schema(tmp_path: Path, redis_url: str) -> None:
    with make_gateway(tmp_path, redis_url, max_wait_s=0) as client:
        schema = schemathesis.openapi.from_asgi("/openapi.json", client.app).exclude(path=list(SKIPPED))
        operations = [op.ok() for op in schema.get_all_operations()]
        paths = {op.path for op in operations}
        for path in ("/v1/jobs", "/v1/files", "/v1/batches", "/v1/adapters", "/v1/usage", "/v1/models"):
            assert path in paths
        for operation in operations:
            _fuzz(operation)


def _fuzz(operation: schemathesis.APIOperation) -> None:
    @given(case=st.one_of(operation.as_strategy(), operation.as_strategy(generation_mode=_negative())))
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case: schemathesis.Case) -> None:
        response = case.call(headers={"Authorization": f"Bearer {ADMIN}"})
        case.validate_response(response, checks=CHECKS)

    run()


def _negative() -> object:
    from schemathesis.generation import GenerationMode

    return GenerationMode.NEGATIVE
