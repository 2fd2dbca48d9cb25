"""Files of the Batch API: uploaded inputs and generated output/error files.

Bytes live on disk under ``files_dir`` (``$LORAQ_HOME/files``; a shared
volume when several gateways run), the registry keeps the metadata. Writes
stream to a temporary file and are renamed into place once complete, so a
crashed upload or a half-written output never appears as a file. Reads are
tenant-scoped through :func:`visible_files` alone.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from registry.errors import Conflict, InvalidRequest, NotFound, TooLarge
from registry.models import BatchRow, FileRow, Tenant

UPLOAD_PURPOSES = ("batch",)
OUTPUT_PURPOSE = "batch_output"
READ_CHUNK = 1 << 20
DELETED = "deleted:"  # storage_uri of a deleted file whose row a batch still references


def new_file_id() -> str:
    return f"file-{secrets.token_hex(12)}"


def visible_files(tenant: Tenant) -> Select[FileRow]:
    query = select(FileRow).where(FileRow.storage_uri != DELETED)
    return query if tenant.is_admin else query.where(FileRow.tenant_id == tenant.id)


def path_of(row: FileRow) -> Path:
    return Path(row.storage_uri.removeprefix("file://"))


def _write(chunks: Iterable[bytes], dest: Path, *, max_bytes: int) -> tuple[int, str]:
    """Stream ``chunks`` into ``dest`` atomically; returns (bytes, sha256)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    digest = hashlib.sha256()
    size = 0
    try:
        with tmp.open("wb") as out:
            for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise TooLarge(
                        f"file is over {max_bytes} bytes (LORAQ_MAX_FILE_BYTES); split it into several batches.",
                        code="file_too_large",
                    )
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        tmp.rename(dest)
    finally:
        tmp.unlink(missing_ok=True)
    return size, digest.hexdigest()


def store(
    session: Session,
    *,
    tenant_id: int,
    filename: str,
    purpose: str,
    chunks: Iterable[bytes],
    files_dir: Path,
    max_bytes: int,
    file_id: str | None = None,
) -> FileRow:
    """Write a file and record it (the caller commits)."""
    file_id = file_id or new_file_id()
    dest = files_dir / file_id
    size, sha = _write(chunks, dest, max_bytes=max_bytes)
    row = FileRow(
        id=file_id,
        tenant_id=tenant_id,
        filename=filename[:255],
        purpose=purpose,
        bytes=size,
        sha256=sha,
        storage_uri=f"file://{dest}",
    )
    session.add(row)
    session.flush()
    return row


def upload(
    session: Session, *, tenant: Tenant, filename: str, purpose: str, stream: BinaryIO, files_dir: Path, max_bytes: int
) -> FileRow:
    if purpose not in UPLOAD_PURPOSES:
        raise InvalidRequest(
            f"purpose {purpose!r} is not served; loraq takes files for purpose 'batch'.", code="invalid_purpose"
        )
    return store(
        session,
        tenant_id=tenant.id,
        filename=filename or "upload.jsonl",
        purpose=purpose,
        chunks=iter(lambda: stream.read(READ_CHUNK), b""),
        files_dir=files_dir,
        max_bytes=max_bytes,
    )


def get(session: Session, *, tenant: Tenant, file_id: str) -> FileRow:
    row = session.scalar(visible_files(tenant).where(FileRow.id == file_id))
    if row is None:
        raise NotFound(f"file {file_id!r} does not exist; GET /v1/files lists yours.", code="file_not_found")
    return row


def list_for(session: Session, *, tenant: Tenant, purpose: str | None = None, limit: int = 100) -> list[FileRow]:
    query = visible_files(tenant)
    if purpose is not None:
        query = query.where(FileRow.purpose == purpose)
    return list(session.scalars(query.order_by(FileRow.created_at.desc()).limit(limit)))


def content(row: FileRow) -> Iterator[bytes]:
    with path_of(row).open("rb") as f:
        yield from iter(lambda: f.read(READ_CHUNK), b"")


def delete(session: Session, *, tenant: Tenant, file_id: str) -> FileRow:
    """Remove a file's bytes; refused while a batch still reads it."""
    row = get(session, tenant=tenant, file_id=file_id)
    busy = session.scalar(
        select(BatchRow.id).where(BatchRow.input_file_id == row.id, BatchRow.ingest_done.is_(False)).limit(1)
    )
    if busy is not None:
        raise Conflict(f"file {file_id!r} is being read by batch {busy}; cancel it first.", code="file_in_use")
    path = path_of(row)
    referenced = session.scalar(
        select(BatchRow.id)
        .where(
            (BatchRow.input_file_id == row.id)
            | (BatchRow.output_file_id == row.id)
            | (BatchRow.error_file_id == row.id)
        )
        .limit(1)
    )
    if referenced is None:
        session.delete(row)
    else:  # the batch keeps naming the file id; the file itself is gone
        row.storage_uri = DELETED
    session.flush()
    path.unlink(missing_ok=True)
    return row
