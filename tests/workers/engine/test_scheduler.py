"""The scheduler's policy, driven step by step with a fake runner and fake adapter tiers (no model).

The fake runner "generates" one token per forward and finishes a row at its
cap; the fake tiers hold every adapter in host memory unless told it is
still loading or failed to load.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence

import pytest

from registry.schemas import FinishReason, GenerationResult, SamplingParams
from workers.contract.streams import Delta
from workers.engine.kv_slots import compact
from workers.engine.row import Row
from workers.engine.scheduler import CANCEL_CHECK_EVERY, Scheduler
from workers.generation import AdapterRef, GenRequest


class KernelCrashed(RuntimeError):
    pass


class FakeRunner:
    """Rows in KV order as the real runner keeps them (rows leaving are replaced by rows from the end, as
    :func:`compact` says); a forward over a row with "poison" in its prompt raises."""

    def __init__(self) -> None:
        self.kv: list[str] = []  # job ids, in the order of the KV cache's rows
        self.forwards: list[list[str]] = []  # job ids of each forward

    def _forward(self, rows: Sequence[Row]) -> None:
        self.forwards.append([r.req.job_id for r in rows])
        if any("poison" in r.req.prompt for r in rows):
            raise KernelCrashed("kernel crashed")
        for r in rows:
            r.tokens.append(7)

    def prefill(self, rows: Sequence[Row]) -> None:
        self._forward(rows)
        self.kv += [r.req.job_id for r in rows]

    def decode(self, rows: Sequence[Row]) -> None:
        assert [r.req.job_id for r in rows] == self.kv, "decode rows out of KV order"
        self._forward(rows)

    packs = False  # a runner that packs joins into the decode forward (SDPA models)

    def packed_tokens(self, running: Sequence[Row], joining: Sequence[Row]) -> list[int] | None:
        if not self.packs:
            return None
        return [1] * len(running) + [max(len(r.prompt_ids) for r in joining)] * len(joining)

    def packed(self, running: Sequence[Row], joining: Sequence[Row]) -> None:
        assert [r.req.job_id for r in running] == self.kv, "decode rows out of KV order"
        self._forward([*running, *joining])
        self.kv += [r.req.job_id for r in joining]

    def keep(self, rows: list[int]) -> list[int]:
        order = compact(rows, rows=len(self.kv)).order
        self.kv = [self.kv[i] for i in order]
        return order

    def reset(self) -> None:
        self.kv = []

    def finished(self, row: Row) -> bool:
        return row.cancelled or len(row.tokens) >= row.cap

    def result(self, row: Row) -> GenerationResult:
        reason = FinishReason.LENGTH if len(row.tokens) >= row.cap else FinishReason.STOP
        return GenerationResult(
            text="x" * len(row.tokens),
            finish_reason=reason,
            prompt_tokens=len(row.prompt_ids),
            completion_tokens=len(row.tokens),
        )

    def streamable(self, row: Row) -> str:
        return "x" * len(row.tokens)

    def row_generator(self, sampling: SamplingParams) -> None:
        return None


class FakeAdapters:
    """Slots 1..n for adapters by key, as the real manager hands them out; loads succeed unless told otherwise."""

    def __init__(self, slots: int = 4) -> None:
        self.slots: list[str | None] = [None] * slots
        self.loading: set[str] = set()
        self.failed: dict[str, BaseException] = {}
        self.active: list[int] | None = None
        self.tokens: list[int] | None = None
        self.calls: list[tuple[list[int], set[int]]] = []  # each activate(): the forward's slots, the step's others

    def slot_of(self, key: str) -> int | None:
        return self.slots.index(key) + 1 if key in self.slots else None

    def slot_for(self, ref: AdapterRef | None, *, pinned: Collection[str], wanted: Collection[str] = ()) -> int | None:
        if ref is None:
            return 0
        if ref.key in self.loading or ref.key in self.failed:
            return None
        if (slot := self.slot_of(ref.key)) is not None:
            return slot
        free = [i for i, key in enumerate(self.slots) if key is None or key not in pinned]
        if not free:
            return None
        self.slots[free[0]] = ref.key
        return free[0] + 1

    def start_load(self, ref: AdapterRef) -> None:
        pass

    def collect_loads(self) -> dict[str, BaseException]:
        failed, self.failed = self.failed, {}
        return failed

    def wait_for_load(self) -> None:
        pass

    def activate(self, slots: list[int], *, step: Collection[int] = (), tokens: list[int] | None = None) -> None:
        self.active = slots
        self.calls.append((slots, set(step)))
        self.tokens = tokens

    def deactivate(self) -> None:
        self.active = None

    def touch(self, slots: Collection[int]) -> None:
        pass


def row(
    job_id: str,
    *,
    prompt_tokens: int = 2,
    cap: int = 8,
    adapter: str | None = None,
    prompt: str = "",
    stream: bool = False,
) -> Row:
    ref = AdapterRef(key=adapter, uri=f"/adapters/{adapter}", sha256="0" * 64, name=adapter) if adapter else None
    sampling = SamplingParams(max_tokens=cap)
    req = GenRequest(job_id=job_id, prompt=prompt or job_id, sampling=sampling, adapter=ref, stream=stream)
    return Row(index=0, req=req, prompt_ids=[1] * prompt_tokens, cap=cap, generator=None)


def scheduler(
    *, max_rows: int = 8, cancelled: object = None, adapters: FakeAdapters | None = None
) -> tuple[Scheduler, FakeRunner]:
    runner = FakeRunner()
    sched = Scheduler(
        runner=runner,
        adapters=adapters or FakeAdapters(),
        max_rows=max_rows,
        cancelled=cancelled,  # type: ignore[arg-type]
    )
    return sched, runner


def run_until_idle(sched: Scheduler, limit: int = 1000) -> None:
    for _ in range(limit):
        sched.receive(block=False)
        if not sched.pending and not sched.running:
            return
        sched.step()
    raise AssertionError("the scheduler did not go idle")


def ids(rows: Sequence[Row]) -> list[str]:
    return [r.req.job_id for r in rows]


def test_admits_rows_only_while_the_batch_has_places_and_the_rest_wait_in_arrival_order() -> None:
    sched, _ = scheduler(max_rows=3)  # one KV slot per place
    rows = [row(f"r{i}") for i in range(5)]
    sched.submit(rows)
    sched.receive(block=False)
    sched.step()
    assert ids(sched.running) == ["r0", "r1", "r2"]
    assert ids(sched.pending) == ["r3", "r4"]
    run_until_idle(sched)
    assert [r.future.result().completion_tokens for r in rows] == [8] * 5


def test_never_runs_more_rows_than_the_batch_holds() -> None:
    sched, runner = scheduler(max_rows=3)
    sched.submit([row(f"r{i}") for i in range(7)])
    run_until_idle(sched)
    assert max(len(f) for f in runner.forwards) <= 3


def test_a_row_leaving_mid_batch_gives_its_kv_slot_to_the_last_row_and_decode_follows_that_order() -> None:
    sched, runner = scheduler()
    rows = [row("a", cap=8), row("short", cap=3), row("c", cap=8), row("d", cap=8)]
    sched.submit(rows)
    sched.receive(block=False)
    while rows[1].tokens != [7] * 3:
        sched.step()
    assert ids(sched.running) == runner.kv == ["a", "d", "c"]  # "d" moved into the slot "short" left
    run_until_idle(sched)
    assert [r.future.result().completion_tokens for r in rows] == [8, 3, 8, 8]


def test_a_cancelled_row_stops_at_the_next_check_and_its_batch_mates_run_to_their_end() -> None:
    asked: list[list[str]] = []

    def cancelled(job_ids: Sequence[str]) -> set[str]:
        asked.append(list(job_ids))
        return {"stop-me"}

    sched, _ = scheduler(cancelled=cancelled)
    stop, keep = row("stop-me", cap=50), row("keep-me", cap=50)
    sched.submit([stop, keep])
    run_until_idle(sched)
    assert stop.future.result().completion_tokens == 1 + CANCEL_CHECK_EVERY  # the prefill's token, then the steps
    assert keep.future.result().completion_tokens == 50
    assert asked[0] == ["stop-me", "keep-me"]


def test_a_row_that_breaks_a_shared_step_fails_alone_and_its_step_mates_finish() -> None:
    sched, runner = scheduler()
    good, bad, other = row("good"), row("bad", prompt="poison"), row("other", adapter="a")
    sched.submit([good, bad, other])
    run_until_idle(sched)
    with pytest.raises(KernelCrashed):
        bad.future.result()
    assert good.future.result().completion_tokens == 8
    assert other.future.result().completion_tokens == 8
    assert ["good", "bad", "other"] in runner.forwards  # the step they shared failed ...
    assert ["bad"] in runner.forwards  # ... then each ran again alone
    assert all(f == ["bad"] or "bad" not in f for f in runner.forwards[1:])


def test_rows_that_shared_a_failed_step_restart_from_their_prompt_one_at_a_time() -> None:
    sched, runner = scheduler()
    rows = [row("a"), row("b", prompt="poison"), row("c")]
    sched.submit(rows)
    sched.receive(block=False)
    sched.step()  # the shared prefill fails
    assert ids(sched.pending) == ["a", "b", "c"] and not sched.running
    assert all(r.exclusive and r.tokens == [] for r in rows)
    assert runner.kv == []
    sched.step()
    assert ids(sched.running) == ["a"]  # alone: nothing joins an exclusive row
    sched.step()
    assert ids(sched.running) == ["a"]


def test_rows_wait_while_their_adapter_loads_and_fail_when_the_load_fails() -> None:
    adapters = FakeAdapters()
    adapters.loading.add("cold")
    sched, _ = scheduler(adapters=adapters)
    warm, cold = row("warm", cap=3, adapter="warm"), row("cold", cap=3, adapter="cold")
    sched.submit([warm, cold])
    sched.receive(block=False)
    sched.step()
    assert ids(sched.running) == ["warm"] and ids(sched.pending) == ["cold"]
    adapters.loading.clear()
    adapters.failed["cold"] = OSError("store unreachable")
    run_until_idle(sched)
    assert warm.future.result().completion_tokens == 3
    with pytest.raises(OSError, match="store unreachable"):
        cold.future.result()


def test_rows_of_resident_adapters_go_before_a_row_needing_a_swap() -> None:
    adapters = FakeAdapters(slots=1)
    adapters.slots[0] = "resident"
    sched, _ = scheduler(max_rows=2, adapters=adapters)
    sched.submit([row("swap", adapter="other"), row("r0", adapter="resident"), row("r1", adapter="resident")])
    sched.receive(block=False)
    sched.step()
    assert ids(sched.running) == ["r0", "r1"]
    assert ids(sched.pending) == ["swap"]


def test_the_forward_runs_with_its_rows_slots_activated() -> None:
    adapters = FakeAdapters()
    sched, _ = scheduler(adapters=adapters)
    sched.submit([row("base"), row("lora", adapter="a")])
    sched.receive(block=False)
    sched.step()
    assert adapters.active == [0, 1]


def test_a_joins_prefill_holds_the_running_rows_adapters_for_the_decode_after_it() -> None:
    adapters = FakeAdapters()
    sched, _ = scheduler(max_rows=2, adapters=adapters)
    sched.submit([row("first", adapter="a", cap=10)])
    sched.receive(block=False)
    sched.step()
    sched.submit([row("joins", adapter="b", cap=10)])
    sched.receive(block=False)
    adapters.calls.clear()
    sched.step()
    assert adapters.calls == [([2], {1}), ([1, 2], set())]  # the prefill, then the decode of both


def test_a_packing_runner_runs_a_join_and_the_decode_in_one_forward_running_rows_first() -> None:
    adapters = FakeAdapters()
    sched, runner = scheduler(max_rows=3, adapters=adapters)
    runner.packs = True
    sched.submit([row("first", adapter="a", cap=10)])
    sched.receive(block=False)
    sched.step()
    sched.submit([row("joins", adapter="b", cap=2, prompt_tokens=3), row("ends", cap=1)])
    sched.receive(block=False)
    runner.forwards.clear()
    sched.step()
    assert runner.forwards == [["first", "ends", "joins"]]  # one forward (a resident row joins first)
    assert adapters.calls[-1] == ([1, 0, 2], set()) and adapters.tokens == [1, 3, 3]
    assert ids(sched.running) == ["first", "joins"]  # "ends" (cap 1) finished at its first token
    sched.step()
    assert runner.forwards[-1] == ["first", "joins"]  # a plain decode: nobody joined


def test_generate_returns_results_in_order_and_raises_the_first_row_error_after_all_ended() -> None:
    sched, _ = scheduler()
    loop = threading.Thread(target=sched.run, daemon=True)
    loop.start()
    try:
        assert [r.completion_tokens for r in sched.generate([row("a", cap=3), row("b", cap=5)])] == [3, 5]
        rows = [row("ok", cap=4), row("bad", prompt="poison")]
        with pytest.raises(KernelCrashed):
            sched.generate(rows)
        assert rows[0].future.result().completion_tokens == 4
    finally:
        sched.close()
        loop.join(5)
    assert not loop.is_alive()


class DecodeCrashes(FakeRunner):
    """Prefill always works; a decode raises while ``armed``."""

    armed = False

    def decode(self, rows: Sequence[Row]) -> None:
        if self.armed:
            raise KernelCrashed("decode crashed")
        super().decode(rows)


def test_a_row_that_finished_at_prefill_keeps_its_result_when_the_same_steps_decode_fails() -> None:
    runner = DecodeCrashes()
    sched = Scheduler(runner=runner, adapters=FakeAdapters(), max_rows=8, cancelled=None)
    mate, quick = row("mate", cap=6), row("quick", cap=1)
    sched.submit([mate])
    sched.receive(block=False)
    sched.step()  # mate runs
    runner.armed = True
    sched.submit([quick])
    sched.receive(block=False)
    sched.step()  # quick joins and finishes at its prefill; then the step's decode fails
    assert quick.future.result().completion_tokens == 1
    runner.armed = False
    run_until_idle(sched)  # mate runs again alone; quick, already answered, must not run again
    assert mate.future.result().completion_tokens == 6
    assert quick.future.result().completion_tokens == 1
    assert sum(f.count("quick") for f in runner.forwards) == 1


def test_only_streamed_rows_publish_their_new_text_after_each_forward_and_before_their_result() -> None:
    published: list[list[Delta]] = []
    streamed, quiet = row("streamed", cap=5, stream=True), row("quiet", cap=5)

    def deltas(batch: Sequence[Delta]) -> None:
        assert not streamed.future.done(), "a row's text must be out before its result"
        published.append(list(batch))

    sched = Scheduler(runner=FakeRunner(), adapters=FakeAdapters(), max_rows=8, deltas=deltas)
    sched.submit([streamed, quiet])
    run_until_idle(sched)
    assert [[(d.job_id, d.pos, d.text) for d in batch] for batch in published] == [
        [("streamed", i, "x")]
        for i in range(5)  # one call per forward, the quiet row never in it
    ]
    assert quiet.future.result().completion_tokens == 5


def test_a_streamed_row_run_again_alone_publishes_its_text_again_from_the_start() -> None:
    published: list[Delta] = []
    runner = DecodeCrashes()
    runner.armed = True
    sched = Scheduler(runner=runner, adapters=FakeAdapters(), max_rows=8, deltas=published.extend)
    streamed = row("streamed", cap=3, stream=True)
    sched.submit([streamed])
    sched.receive(block=False)
    sched.step()  # its prefill publishes "x" at 0, then the decode fails: it runs again alone
    runner.armed = False
    run_until_idle(sched)
    assert [(d.pos, d.text) for d in published] == [(0, "x"), (0, "x"), (1, "x"), (2, "x")]
