"""Files of the Batch API: uploaded inputs and generated output/error files.

Bytes live on disk under ``files_dir`` (``$LORAQ_HOME/files``; a shared
volume when several gateways run), the registry keeps the metadata. Writes
stream to a temporary file and are renamed into place once complete, so a
crashed upload or a half-written output never appears as a file. Reads are
tenant-scoped through :func:`visible_files` alone.

A file the retention purged (``registry.retention``) reads 404 ``file_expired``: its row is gone and
its id is covered by the tenant's purge mark, or (a batch's output past its ``output_expires_after``)
its row stays, since the batch still names it, with its bytes gone.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from registry import ids, purge_marks
from registry.errors import Conflict, InvalidRequest, NotFound, TooLarge
from registry.models import BatchRow, FileRow, Tenant

UPLOAD_PURPOSES = ("batch",)
OUTPUT_PURPOSE = "batch_output"
READ_CHUNK = 1 << 20
DELETED = "deleted:"  # storage_uri of a deleted file whose row a batch still references
EXPIRED = "expired:"  # storage_uri of a batch output file purged at its output_expires_after
GONE = (DELETED, EXPIRED)


def new_file_id() -> str:
    """``file-`` and a version 7 UUID's hex: its creation time is in it (``registry.ids``)."""
    return f"file-{ids.uuid7().hex}"


def visible_files(tenant: Tenant) -> Select[FileRow]:
    query = select(FileRow).where(FileRow.storage_uri.not_in(GONE))
    return query if tenant.is_admin else query.where(FileRow.tenant_id == tenant.id)


def has_bytes(storage_uri: str) -> bool:
    return storage_uri not in GONE


def path_of_uri(storage_uri: str) -> Path:
    return Path(storage_uri.removeprefix("file://"))


def path_of(row: FileRow) -> Path:
    return path_of_uri(row.storage_uri)


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
    """The tenant's file; 404 ``file_expired`` when the retention purged it, ``file_not_found`` else."""
    scope = select(FileRow).where(FileRow.id == file_id)
    row = session.scalar(scope if tenant.is_admin else scope.where(FileRow.tenant_id == tenant.id))
    if row is not None and has_bytes(row.storage_uri):
        return row
    if (row is not None and row.storage_uri == EXPIRED) or (
        row is None and purge_marks.expired(session, tenant=tenant, kind=purge_marks.Kind.FILE, object_id=file_id)
    ):
        raise expired(file_id)
    raise NotFound(f"file {file_id!r} does not exist; GET /v1/files lists yours.", code="file_not_found")


def expired(file_id: str) -> NotFound:
    return NotFound(
        f"file {file_id!r} has expired: the retention (LORAQ_RETENTION_DAYS, or the batch's output_expires_after) "
        "deleted it. Download outputs before they expire.",
        code="file_expired",
    )


def list_for(session: Session, *, tenant: Tenant, purpose: str | None = None, limit: int = 100) -> list[FileRow]:
    query = visible_files(tenant)
    if purpose is not None:
        query = query.where(FileRow.purpose == purpose)
    return list(session.scalars(query.order_by(FileRow.created_at.desc()).limit(limit)))


def content(row: FileRow) -> Iterator[bytes]:
    """The file's bytes; opened before the first chunk is asked for, so bytes the purge removed after
    the row was read are a 404 ``file_expired``, not a response cut short."""
    try:
        stream = path_of(row).open("rb")
    except FileNotFoundError:
        raise expired(row.id) from None
    return _chunks(stream)


def _chunks(stream: BinaryIO) -> Iterator[bytes]:
    with stream:
        yield from iter(lambda: stream.read(READ_CHUNK), b"")


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
