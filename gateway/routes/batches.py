"""``/v1/batches``: the OpenAI Batch API over loraq's queues.

Creating a batch only records it (``validating``); the gateway's batch loop
(:mod:`gateway.batch_supervisor`) reads the file, runs its lines as jobs at
bulk priority, keeps ``request_counts`` current and writes the output and
error files when the last job ends.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from gateway.deps import CurrentTenant, SessionDep
from gateway.webhooks.targets import check_target
from registry import batches, quotas, webhooks

router = APIRouter(prefix="/v1/batches", tags=["batches"])


class OutputExpiresAfter(BaseModel):
    """OpenAI's expiry of a batch's output and error files, counted from when they are written."""

    model_config = ConfigDict(extra="forbid")

    anchor: Literal["created_at"] = "created_at"
    seconds: int = Field(ge=3600, le=2_592_000, description="1 hour to 30 days.")


class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input_file_id: str = Field(min_length=1, max_length=64)
    endpoint: str = Field(description="/v1/completions or /v1/chat/completions")
    completion_window: str = Field(default="24h", description="Hours, such as '24h' (at most 168h).")
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    output_expires_after: OutputExpiresAfter | None = Field(
        default=None, description="Its output and error files, and its jobs, are deleted this long after the end."
    )


@router.post("")
def create_batch(body: BatchCreate, request: Request, tenant: CurrentTenant, session: SessionDep) -> dict[str, Any]:
    """``metadata.webhook_url``: where the batch's end event (``batch.completed``, ...) is sent."""
    own_hook = (body.metadata or {}).get(webhooks.METADATA_KEY)
    if own_hook:
        check_target(own_hook, allow=request.app.state.settings.webhook_allow)
    with session.begin():
        if own_hook:
            webhooks.require_secret(session, tenant.id)
        quotas.enforce(session, tenant=tenant)
        row = batches.create(
            session,
            tenant=tenant,
            input_file_id=body.input_file_id,
            endpoint=body.endpoint,
            completion_window=body.completion_window,
            metadata=body.metadata,
            output_expires_s=body.output_expires_after.seconds if body.output_expires_after else None,
        )
        view = batches.view(row)
    request.app.state.batches.wake()
    return view


@router.get("/{batch_id}")
def get_batch(batch_id: str, tenant: CurrentTenant, session: SessionDep) -> dict[str, Any]:
    return batches.view(batches.get(session, tenant=tenant, batch_id=batch_id))


@router.get("")
def list_batches(
    tenant: CurrentTenant,
    session: SessionDep,
    after: str | None = None,
    limit: int = Query(default=20, ge=1, le=100),
) -> dict[str, Any]:
    rows = batches.list_for(session, tenant=tenant, after=after, limit=limit + 1)
    page = [batches.view(r) for r in rows[:limit]]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(rows) > limit,
    }


@router.post("/{batch_id}/cancel")
def cancel_batch(batch_id: str, request: Request, tenant: CurrentTenant, session: SessionDep) -> dict[str, Any]:
    with session.begin():
        view = batches.view(batches.cancel(session, tenant=tenant, batch_id=batch_id))
    request.app.state.batches.wake()
    return view
