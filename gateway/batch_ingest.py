"""Read a batch's input file into jobs: stream, validate, record in chunks, publish.

The file is read from the batch's recorded byte offset, ``ingest_chunk_lines``
lines at a time: lines are parsed and checked outside any transaction, then
one transaction records the chunk's jobs and refused lines and moves the
offset (``registry.batches.commit_chunk``), then the chunk's jobs are
published as messages of up to ``bulk_chunk_jobs`` jobs of one adapter at
bulk priority. Memory stays at one chunk whatever the file's size.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, BinaryIO

from sqlalchemy.orm import Session, sessionmaker

from gateway import base_model
from gateway.limits import ModelLimits, check_job
from gateway.settings import GatewaySettings
from registry import batches, files
from registry.adapters import BASE_ADAPTER, ResolvedAdapter, Resolver
from registry.batch_lines import BatchLine, LineError, parse_line
from registry.errors import LoraqError
from registry.models import BatchRow, FileRow, Tenant
from registry.schemas import Priority
from workers.contract.messages import Publisher

log = logging.getLogger(__name__)


@dataclass
class _Read:
    """Lines read from the file for one chunk."""

    start_offset: int
    end_offset: int
    end_line: int
    eof: bool
    raw: list[tuple[int, bytes]] = field(default_factory=list)


def read_lines(f: BinaryIO, *, offset: int, line_no: int, limit: int) -> _Read:
    """Up to ``limit`` non-blank lines from ``offset``; blank lines are skipped but counted."""
    f.seek(offset)
    read = _Read(start_offset=offset, end_offset=offset, end_line=line_no, eof=False)
    while len(read.raw) < limit:
        raw = f.readline()
        if not raw:
            read.eof = True
            break
        read.end_offset += len(raw)
        if raw.strip():
            read.raw.append((read.end_line, raw))
        read.end_line += 1
    if not read.eof:  # a file ending exactly here is done now, not one empty chunk later
        read.eof = f.read(1) == b""
    return read


def chunks_of(tasks: Sequence[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    """Messages of up to ``size`` jobs (TaskJob payloads), each of one adapter, in first-seen order."""
    by_adapter: dict[str, list[dict[str, Any]]] = {}
    for task in tasks:
        by_adapter.setdefault(task["adapter"], []).append(task)
    for group in by_adapter.values():
        it = iter(group)
        while batch := list(islice(it, size)):
            yield batch


class Ingester:
    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        publisher: Publisher,
        settings: GatewaySettings,
        limits: ModelLimits,
        owner: str,
    ) -> None:
        self.sessions = sessions
        self.publisher = publisher
        self.settings = settings
        self.limits = limits
        self.owner = owner
        self.aliases = base_model.aliases(settings)

    def run(self, batch_id: str) -> None:
        """Ingest one batch to its end, or until another gateway or a cancel takes it away."""
        with self.sessions() as session, session.begin():
            batch = batches.claim(session, batch_id=batch_id, owner=self.owner, lease_s=self.settings.batch_lease_s)
            if batch is None:
                return
            source = session.get(FileRow, batch.input_file_id)
            seen = batches.known_custom_ids(session, batch_id=batch_id)
            gap = batches.unpublished(session, batch=batch)
            offset, line_no, endpoint = batch.ingest_offset, batch.ingested_lines, batch.endpoint
        assert source is not None  # FK
        if gap:
            log.info("batch %s: publishing %d jobs recorded before a restart", batch_id, len(gap))
            self._publish(batch_id, gap, upto_line=line_no)
        # One chunk's publish runs on its own thread while the next chunk is parsed and recorded;
        # chunks are published in order, so published_lines only ever covers published lines.
        with files.path_of(source).open("rb") as f, ThreadPoolExecutor(1, thread_name_prefix="loraq-publish") as out:
            pending: Future[None] | None = None
            while True:
                read = read_lines(f, offset=offset, line_no=line_no, limit=self.settings.ingest_chunk_lines)
                parsed = self._parse_all(read.raw, batch_id, endpoint, seen)
                try:
                    tasks = self._commit(batch_id, read, parsed)
                except batches.LeaseLost:
                    log.info("batch %s: ingest stopped (cancelled or taken over)", batch_id)
                    return
                if pending is not None:
                    pending.result()  # a failed publish stops the ingest here; the next pass resends
                pending = out.submit(self._publish, batch_id, tasks, upto_line=read.end_line)
                if read.eof:
                    pending.result()
                    log.info("batch %s: input read to its end (%d lines)", batch_id, read.end_line)
                    return
                offset, line_no = read.end_offset, read.end_line

    def _parse_all(
        self, raw: list[tuple[int, bytes]], batch_id: str, endpoint: str, seen: set[str]
    ) -> list[BatchLine | LineError]:
        parsed = [self._parse(line, n, batch_id, endpoint, seen) for n, line in raw]
        return [self._check(p) if isinstance(p, BatchLine) else p for p in parsed]

    def _parse(self, raw: bytes, line_no: int, batch_id: str, endpoint: str, seen: set[str]) -> BatchLine | LineError:
        line = parse_line(raw, batch_id=batch_id, line_no=line_no, endpoint=endpoint, aliases=self.aliases)
        if isinstance(line, LineError):
            return line
        if line.custom_id in seen:
            return LineError(line_no, line.custom_id, "duplicate_custom_id", "custom_id repeats an earlier line's.")
        seen.add(line.custom_id)
        return line

    def _check(self, line: BatchLine) -> BatchLine | LineError:
        try:
            check_job(
                line.job,
                limits=self.limits,
                max_prompt_chars=self.settings.max_prompt_chars,
                max_tokens_limit=self.settings.max_tokens_limit,
            )
        except LoraqError as exc:
            return LineError(line.line_no, line.custom_id, exc.code, exc.message)
        return line

    def _commit(self, batch_id: str, read: _Read, parsed: list[BatchLine | LineError]) -> list[dict[str, Any]]:
        with self.sessions() as session, session.begin():
            batch = session.get(BatchRow, batch_id)
            tenant = session.get(Tenant, batch.tenant_id) if batch is not None else None
            if batch is None or tenant is None:
                raise batches.LeaseLost(batch_id)
            if any(isinstance(p, BatchLine) and p.job.adapter == BASE_ADAPTER for p in parsed):
                base_model.ensure(session, settings=self.settings)
            resolve = Resolver(session, tenant=tenant)
            lines: list[tuple[BatchLine, ResolvedAdapter]] = []
            errors = [p for p in parsed if isinstance(p, LineError)]
            for p in parsed:
                if isinstance(p, BatchLine):
                    key = p.job.routing_key or p.job_id
                    try:
                        lines.append((p, resolve(p.job.adapter, key)))
                    except LoraqError as exc:
                        errors.append(LineError(p.line_no, p.custom_id, exc.code, exc.message))
            chunk = batches.Chunk(
                start_offset=read.start_offset,
                end_offset=read.end_offset,
                end_line=read.end_line,
                eof=read.eof,
                lines=lines,
                errors=errors,
            )
            tasks = batches.commit_chunk(
                session, batch=batch, owner=self.owner, lease_s=self.settings.batch_lease_s, chunk=chunk
            )
            for task in tasks:
                task["tenant"] = tenant.name
            log.info(
                "batch lines %d-%d recorded: %d jobs, %d refused",
                read.end_line - len(parsed),
                read.end_line,
                len(tasks),
                len(errors),
                extra={"batch_id": batch_id, "tenant": tenant.name},
            )
            return tasks

    def _publish(self, batch_id: str, tasks: Sequence[dict[str, Any]], *, upto_line: int) -> None:
        """Publish, then note it. A failure leaves the gap for the next pass (the jobs are recorded)."""
        chunks = [(f"chunk-{c[0]['job_id']}", c) for c in chunks_of(tasks, self.settings.queue.bulk_chunk_jobs)]
        self.publisher.publish_chunks(chunks, priority=Priority.BULK)
        with self.sessions() as session, session.begin():
            batches.mark_published(session, batch_id=batch_id, upto_line=upto_line)
