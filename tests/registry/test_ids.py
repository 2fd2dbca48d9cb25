"""Ids carry their creation time, and the purge marks tell a purged id from one never issued (pure)."""

from __future__ import annotations

import time
import uuid

from registry import ids
from registry.batch_lines import job_id_for
from registry.batches import new_batch_id
from registry.files import new_file_id
from registry.jobs import new_job_id
from registry.purge_marks import Mark, covers, mark_of


def test_new_ids_carry_their_creation_time_in_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    made = [new_job_id(), new_file_id(), new_batch_id()]
    after = time.time_ns() // 1_000_000
    for object_id in made:
        ms = ids.created_ms(object_id)
        assert ms is not None and before <= ms <= after, object_id
    assert uuid.UUID(made[0]).version == 7


def test_a_bulk_lines_job_id_is_deterministic_and_carries_its_batchs_time() -> None:
    batch_id = new_batch_id()
    first, again, other = job_id_for(batch_id, 3), job_id_for(batch_id, 3), job_id_for(batch_id, 4)
    assert first == again != other
    assert uuid.UUID(first).version == 8
    assert ids.created_ms(first) == ids.created_ms(other) == ids.created_ms(batch_id)


def test_ids_made_before_times_were_in_ids_have_no_time_and_keep_their_line_ids() -> None:
    legacy_batch = "batch_" + "ab" * 12
    assert ids.created_ms(str(uuid.uuid4())) is None
    assert ids.created_ms("file-" + "cd" * 12) is None
    assert ids.created_ms(legacy_batch) is None
    assert ids.created_ms("not an id") is None
    assert job_id_for(legacy_batch, 7) == str(uuid.uuid5(uuid.NAMESPACE_URL, f"loraq:{legacy_batch}:7"))


def test_a_mark_covers_ids_created_up_to_the_newest_purged_and_no_later() -> None:
    old, newest, later = (str(ids.uuid7(ms)) for ms in (1_000, 2_000, 3_000))
    mark = mark_of([old, newest])
    assert mark == Mark(newest_ms=2_000, legacy=False)
    assert covers(mark, old) and covers(mark, newest)
    assert not covers(mark, later)
    assert not covers(mark, str(uuid.uuid4()))  # no id without a time was purged
    assert covers(mark_of([str(uuid.uuid4())]), str(uuid.uuid4()))
    assert not covers(Mark(), old)
