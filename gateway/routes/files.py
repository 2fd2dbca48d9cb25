"""``/v1/files``: the Batch API's files, in OpenAI's shapes (upload, read, content, delete)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Form, UploadFile
from fastapi.responses import StreamingResponse

from gateway.deps import CurrentTenant, SessionDep, SettingsDep
from registry import files
from registry.models import FileRow

router = APIRouter(prefix="/v1/files", tags=["files"])


def file_object(row: FileRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "file",
        "bytes": row.bytes,
        "created_at": int(row.created_at.timestamp()),
        "filename": row.filename,
        "purpose": row.purpose,
        "status": "processed",
        "expires_at": int(row.expires_at.timestamp()) if row.expires_at is not None else None,
        "status_details": None,
    }


@router.post("")
def upload_file(
    file: UploadFile, tenant: CurrentTenant, session: SessionDep, settings: SettingsDep, purpose: str = Form()
) -> dict[str, Any]:
    """Store a JSONL file for a batch (``purpose=batch``); lines are checked when a batch reads it."""
    with session.begin():
        row = files.upload(
            session,
            tenant=tenant,
            filename=file.filename or "upload.jsonl",
            purpose=purpose,
            stream=file.file,
            files_dir=settings.files_path(),
            max_bytes=settings.max_file_bytes,
        )
        return file_object(row)


@router.get("")
def list_files(tenant: CurrentTenant, session: SessionDep, purpose: str | None = None) -> dict[str, Any]:
    rows = files.list_for(session, tenant=tenant, purpose=purpose)
    return {"object": "list", "data": [file_object(r) for r in rows], "has_more": False}


@router.get("/{file_id}")
def get_file(file_id: str, tenant: CurrentTenant, session: SessionDep) -> dict[str, Any]:
    return file_object(files.get(session, tenant=tenant, file_id=file_id))


@router.get("/{file_id}/content")
def file_content(file_id: str, tenant: CurrentTenant, session: SessionDep) -> StreamingResponse:
    row = files.get(session, tenant=tenant, file_id=file_id)
    return StreamingResponse(
        files.content(row),
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{row.filename}"', "Content-Length": str(row.bytes)},
    )


@router.delete("/{file_id}")
def delete_file(file_id: str, tenant: CurrentTenant, session: SessionDep) -> dict[str, Any]:
    with session.begin():
        row = files.delete(session, tenant=tenant, file_id=file_id)
        return {"id": row.id, "object": "file", "deleted": True}
