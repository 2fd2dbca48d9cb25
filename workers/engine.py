"""The loraq engine: one resident base model, adapter slots, continuous batching.

- **Mixed-LoRA layers** (:mod:`workers.engine_layers`): every linear module
  of the decoder blocks is wrapped once; a forward serves rows of different
  adapters with two batched matmuls per module.
- **Continuous batching**: a step loop over the running rows. Between steps,
  pending rows join (their prompts are prefilled in one forward and their KV
  cache is merged into the running batch's, left-padded to a common length)
  and finished rows leave (their cache rows are dropped and the common left
  padding trimmed). Each row has its own sampling settings, seed, stop
  strings and token budget.
- **Adapter tiers**: device slots (``max_loras``; eviction by
  :func:`workers.slots.choose_slot`, never a slot a running row uses), a host
  LRU cache by bytes (``max_cpu_loras_mb``), and the disk tier
  (:mod:`workers.engine_store`). Host loads run on a background thread: a row
  whose adapter is cold waits in ``pending`` while the others run.
- **Memory budget** (:mod:`workers.memory`): rows join only while their KV
  cache fits, so a burst of long requests queues instead of running out of
  memory; the engine refuses to start unless one full-length row fits.

PEFT is the oracle: for every supported adapter, a row's logits equal PEFT's
for that adapter alone (tests/workers/test_engine.py).
"""

from __future__ import annotations

import logging
import os
import queue
import tempfile
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, PreTrainedModel

from registry.schemas import ChatMessage, GenerationResult
from workers import chat, memory, metrics
from workers.decoding import finish_row
from workers.engine_adapters import HostAdapter, read_adapter
from workers.engine_kv import KVBatch
from workers.engine_layers import wrap
from workers.engine_sampling import choose_tokens, row_generator
from workers.engine_store import local_dir
from workers.errors import PromptTooLong
from workers.generation import AdapterRef, GenRequest
from workers.slots import Slot, choose_slot, host_evictions

log = logging.getLogger(__name__)

CANCEL_CHECK_EVERY = 4  # decode steps between cancellation checks (one Redis MGET)
SWAP_WAIT_S = 0.5  # a row waits at most this long for rows of resident adapters to go first


@dataclass
class _Row:
    index: int  # position in the caller's request list
    req: GenRequest
    prompt_ids: list[int]
    cap: int  # new tokens allowed: max_tokens, bounded by the model's positions
    generator: torch.Generator | None
    slot: int = 0
    tokens: list[int] = field(default_factory=list)
    cancelled: bool = False
    exclusive: bool = False  # runs alone: it shared a step that failed, and may be the cause
    arrived: float = field(default_factory=time.monotonic)
    future: Future[GenerationResult] = field(default_factory=Future)

    def restart(self, device: torch.device) -> None:
        """Back to its prompt, to run again alone."""
        self.tokens = []
        self.generator = row_generator(self.req.sampling, device)
        self.exclusive = True

    @property
    def need(self) -> int:
        return len(self.prompt_ids) + self.cap

    @property
    def key(self) -> str | None:
        return self.req.adapter.key if self.req.adapter else None


class LoraEngine:
    def __init__(
        self,
        *,
        base_model: Path,
        device: str = "cpu",
        dtype: str = "float32",
        max_loras: int = 8,
        max_rows: int = 16,
        max_lora_rank: int = 64,
        max_cpu_loras_mb: int = 1024,
        memory_budget_mb: int | None = None,
        cache_dir: Path | None = None,
        cancelled: Callable[[Sequence[str]], set[str]] | None = None,
    ) -> None:
        """Load the model on the engine's own thread, which then runs the step loop.

        Every forward, and the loading, happen on that one thread: with the
        GNU OpenMP runtime of torch's CPU builds, once the main thread has run
        parallel torch ops, other threads run them about 1.5x slower (measured
        here), and a Celery worker's main thread is the one that starts the engine.
        """
        settings = dict(
            base_model=base_model,
            device=device,
            dtype=dtype,
            max_loras=max_loras,
            max_rows=max_rows,
            max_lora_rank=max_lora_rank,
            max_cpu_loras_mb=max_cpu_loras_mb,
            memory_budget_mb=memory_budget_mb,
            cache_dir=cache_dir,
            cancelled=cancelled,
        )
        ready = threading.Event()
        failed: list[BaseException] = []

        def serve() -> None:
            try:
                self._setup(**settings)  # type: ignore[arg-type]
            except BaseException as exc:
                failed.append(exc)
                return
            finally:
                ready.set()
            self._loop()

        self._thread = threading.Thread(target=serve, name="loraq-engine", daemon=True)
        self._thread.start()
        ready.wait()
        if failed:
            raise failed[0]

    def _setup(
        self,
        *,
        base_model: Path,
        device: str,
        dtype: str,
        max_loras: int,
        max_rows: int,
        max_lora_rank: int,
        max_cpu_loras_mb: int,
        memory_budget_mb: int | None,
        cache_dir: Path | None,
        cancelled: Callable[[Sequence[str]], set[str]] | None,
    ) -> None:
        self.device = torch.device(device)
        self.dtype: torch.dtype = getattr(torch, dtype)
        self.max_loras = max_loras
        self.max_rows = max_rows
        self.r_max = max_lora_rank
        self.host_budget = max_cpu_loras_mb * 2**20
        self.cache_dir = cache_dir or Path(tempfile.gettempdir()) / "loraq-adapter-cache"
        self.cancelled = cancelled
        self.name = base_model.name
        self.tokenizer = AutoTokenizer.from_pretrained(base_model)
        model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(base_model, dtype=self.dtype)
        self.model = model.to(self.device).eval()
        self.batch, self.layers = wrap(self.model, slots=max_loras + 1, r_max=max_lora_rank)
        self.shapes = {name: (layer.in_features, layer.out_features) for name, layer in self.layers.items()}
        self.module_names = frozenset(name for name, _ in self.model.named_modules())
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else min(self.eos_ids, default=0))  # masked out anyway
        self.max_positions = int(getattr(self.model.config, "max_position_embeddings", 2048))
        self.budget = self._plan_memory(memory_budget_mb)
        self._publish_memory_plan()
        # Tiers. Slot i+1 of the layers holds self.slots[i]; slot 0 is the base model.
        self.slots = [Slot(key=None, last_used=0.0) for _ in range(max_loras)]
        self.slot_names: dict[str, str] = {}  # adapter key -> name, for resident_adapters
        self.host: OrderedDict[str, HostAdapter] = OrderedDict()  # LRU, oldest first
        self.loading: dict[str, Future[HostAdapter]] = {}
        self._loader = ThreadPoolExecutor(max_workers=2, thread_name_prefix="loraq-adapter-load")
        self._step_lock = threading.Lock()  # one forward at a time (the loop, or score())
        self._inbox: queue.SimpleQueue[_Row | None] = queue.SimpleQueue()
        self._pinned: frozenset[str] = frozenset()  # adapters of the running rows
        self._steps = 0
        self._resident: frozenset[str] = frozenset()
        self._loads = 0
        self._slot_map: list[int] | None = None
        self._ranks: dict[int, int] = {}  # slot -> rank of the adapter in it
        self._rank = 0  # max rank over adapters in slots: the width the layers gather

    # -- the Generator interface -------------------------------------------------

    def resident_adapters(self) -> frozenset[str]:
        return self._resident

    def adapter_loads(self) -> int:
        return self._loads

    def render_chat(self, messages: Sequence[ChatMessage]) -> str:
        return chat.render(self.tokenizer, messages)

    def describe(self) -> str:
        params = sum(p.numel() for p in self.model.parameters())
        return (
            f"loraq engine: {self.name} on {self.device} ({self.dtype}), {params / 1e6:.2f}M params, "
            f"{len(self.layers)} LoRA modules, max_loras={self.max_loras} rank<={self.r_max}, "
            f"max_rows={self.max_rows}; {self.budget.describe()}"
        )

    def generate(self, requests: Sequence[GenRequest]) -> list[GenerationResult]:
        """Run the requests in the engine's running batch and wait for all of them.

        Safe to call from several threads: every call's rows join the one
        running batch at step boundaries (continuous batching across calls).
        Raises the first row error (after every row has ended), so the caller
        can retry rows alone to find which one is at fault.
        """
        rows = [self._prepare(i, r) for i, r in enumerate(requests)]
        for row in rows:
            self._inbox.put(row)
        results: list[GenerationResult] = []
        error: BaseException | None = None
        for row in rows:
            try:
                results.append(row.future.result())
            except Exception as exc:
                error = error or exc
        if error is not None:
            raise error
        return results

    # -- preparation and the step loop -------------------------------------------

    def _prepare(self, index: int, req: GenRequest) -> _Row:
        ids: list[int] = self.tokenizer(req.prompt)["input_ids"]
        room = self.max_positions - len(ids)
        if room < 1:
            raise PromptTooLong(f"prompt of {len(ids)} tokens leaves no room in the model's {self.max_positions}")
        row = _Row(
            index=index,
            req=req,
            prompt_ids=ids,
            cap=min(req.sampling.max_tokens, room),
            generator=row_generator(req.sampling, self.device),
        )
        return row  # row.need <= max_positions <= kv_tokens: the budget always admits one full row

    def _loop(self) -> None:
        """The step loop, on its own thread for the engine's lifetime."""
        pending: deque[_Row] = deque()
        running: list[_Row] = []
        kv = KVBatch()
        while self._receive(pending, block=not pending and not running):
            joined: list[_Row] = []
            try:
                with self._step_lock, torch.inference_mode():
                    self._collect_loads(pending)
                    joined = self._admit(pending, running)
                    running = self._step(joined, running, kv)
            except Exception as exc:  # a forward failed: no row of it can be trusted to be innocent
                running = self._isolate([*running, *(r for r in joined if r not in running)], exc, pending)
                kv = KVBatch()
                self._slot_map = None
            self._pinned = frozenset(r.key for r in running if r.key)
            if not running and pending and not joined:
                self._wait_for_load()

    def _receive(self, pending: deque[_Row], *, block: bool) -> bool:
        """Take every row submitted since the last step (waiting for one when idle); False on close."""
        while block or not self._inbox.empty():
            row = self._inbox.get()
            if row is None:
                return False
            self._arrive(row, pending)
            block = False
        return True

    def _step(self, joined: list[_Row], running: list[_Row], kv: KVBatch) -> list[_Row]:
        """Prefill the rows joining, one decode step for all, and retire the finished."""
        if joined:
            self._prefill(joined, kv)
            running = self._retire(running + joined, kv)
        if running:
            self._decode(running, kv)
            self._steps += 1
            if self.cancelled is not None and self._steps % CANCEL_CHECK_EVERY == 0:
                self._check_cancelled(running)
            running = self._retire(running, kv)
        return running

    def _arrive(self, row: _Row, pending: deque[_Row]) -> None:
        pending.append(row)
        if row.req.adapter is not None:
            self._start_load(row.req.adapter)  # prefetch into host memory while it waits

    def _isolate(self, rows: list[_Row], exc: Exception, pending: deque[_Row]) -> list[_Row]:
        """A step failed: a row that ran alone fails; the others run again, each alone."""
        if len(rows) == 1 and rows[0].exclusive:
            rows[0].future.set_exception(exc)
            return []
        log.warning("a step of %d rows failed (%s); each runs again alone", len(rows), exc)
        for r in reversed(rows):
            r.restart(self.device)
            pending.appendleft(r)
        return []

    def _check_cancelled(self, running: list[_Row]) -> None:
        assert self.cancelled is not None
        stopped = self.cancelled([r.req.job_id for r in running])
        for r in running:
            r.cancelled = r.cancelled or r.req.job_id in stopped

    def _wait_for_load(self) -> None:
        """Nothing can run until an adapter arrives: wait briefly (new rows may arrive meanwhile)."""
        if self.loading:
            wait(list(self.loading.values()), timeout=0.05, return_when=FIRST_COMPLETED)
        else:
            time.sleep(0.001)

    def _admit(self, pending: deque[_Row], running: list[_Row]) -> list[_Row]:
        """Pending rows that can join now: room in the batch and the KV budget, adapter in a slot.

        Rows join in groups of at least a quarter of the batch (unless fewer
        are waiting): each join costs a prefill forward and a KV-cache merge,
        so admitting rows one by one as each other row finishes costs more
        than the few steps a place stays empty.
        """
        joined: list[_Row] = []
        waiting: deque[_Row] = deque()
        if any(r.exclusive for r in running):
            return joined
        if pending and pending[0].exclusive:
            if running or (slot := self._slot_for(pending[0], pinned=set())) is None:
                return joined
            row = pending.popleft()
            row.slot = slot
            return [row]
        group = max(1, self.max_rows // 4)
        if running and self.max_rows - len(running) < min(group, len(pending)):
            return joined
        clock = time.monotonic()

        def order(r: _Row) -> int:
            """Overdue rows first, then rows whose adapter is in a slot, then rows needing a swap."""
            if clock - r.arrived >= SWAP_WAIT_S:
                return 0
            return 1 if r.key is None or self._slot_of(r.key) is not None else 2

        candidates = sorted(pending, key=order)  # stable: arrival order within each class
        pending.clear()
        wanted = frozenset(r.key for r in candidates if r.key)
        for i, row in enumerate(candidates):
            now = running + joined
            if len(now) >= self.max_rows or not memory.fits(
                running_needs=[r.need for r in now], need=row.need, kv_tokens=self.budget.kv_tokens
            ):
                waiting.extend(candidates[i:])
                break
            slot = self._slot_for(row, pinned={r.key for r in now if r.key}, wanted=wanted)
            if slot is None:  # adapter still loading, or every slot in use by running rows
                waiting.append(row)
                continue
            row.slot = slot
            joined.append(row)
        pending.extend(sorted(waiting, key=lambda r: r.arrived))
        return joined

    def _prefill(self, rows: list[_Row], kv: KVBatch) -> None:
        cache = DynamicCache()
        logits, mask = self._forward_prompts(rows, cache=cache, last_only=True)
        self._append(rows, logits[:, -1, :])
        kv.add(cache, mask)

    def _forward_prompts(
        self, rows: list[_Row], *, cache: DynamicCache | None, last_only: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward over the rows' prompts, left-padded; returns logits and the attention mask."""
        width = max(len(r.prompt_ids) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        self._use_slots([r.slot for r in rows])
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=cache is not None,
            logits_to_keep=1 if last_only else 0,
        )
        return out.logits, mask

    @torch.inference_mode()
    def score(self, requests: Sequence[GenRequest]) -> list[torch.Tensor]:
        """Each prompt's logits at every prompt position ([tokens, vocab]), rows of different
        adapters in one forward. At most ``max_loras`` distinct adapters."""
        rows = [self._prepare(i, r) for i, r in enumerate(requests)]
        keys = {r.key for r in rows if r.key}
        if len(keys) > self.max_loras:
            raise ValueError(f"{len(keys)} adapters in one forward; this engine holds {self.max_loras}")
        for row in rows:
            if row.req.adapter is not None and row.key not in self.host:
                self.host[row.key] = self._read(row.req.adapter)  # type: ignore[index]
        with self._step_lock:
            for row in rows:
                slot = self._slot_for(row, pinned=keys | self._pinned)
                if slot is None:
                    raise RuntimeError("every adapter slot is in use by running rows; score when the engine is idle")
                row.slot = slot
            logits, _ = self._forward_prompts(rows, cache=None, last_only=False)
        return [logits[i, logits.shape[1] - len(r.prompt_ids) :] for i, r in enumerate(rows)]

    def _decode(self, rows: list[_Row], kv: KVBatch) -> None:
        ids = torch.tensor([[r.tokens[-1]] for r in rows], dtype=torch.long, device=self.device)
        positions = torch.tensor([[len(r.prompt_ids) + len(r.tokens) - 1] for r in rows], device=self.device)
        mask = kv.extend()
        self._use_slots([r.slot for r in rows])
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=kv.cache, use_cache=True)
        self._append(rows, out.logits[:, -1, :])

    def _append(self, rows: list[_Row], logits: torch.Tensor) -> None:
        tokens = choose_tokens(logits, [r.req.sampling for r in rows], [r.generator for r in rows])
        for r, t in zip(rows, tokens, strict=True):
            r.tokens.append(t)
        now = time.monotonic()
        for slot in {r.slot for r in rows if r.slot}:  # once per slot in use, not once per row
            self.slots[slot - 1] = Slot(key=self.slots[slot - 1].key, last_used=now)

    def _retire(self, rows: list[_Row], kv: KVBatch) -> list[_Row]:
        """Hand finished rows their results and drop them from the KV cache; return the rows still running."""
        keep = []
        for i, r in enumerate(rows):
            if self._finished(r):
                r.future.set_result(self._result(r))
            else:
                keep.append(i)
        if len(keep) < len(rows):
            kv.keep(keep)
        return [rows[i] for i in keep]

    def _finished(self, r: _Row) -> bool:
        if r.cancelled or len(r.tokens) >= r.cap or r.tokens[-1] in self.eos_ids:
            return True
        stops = r.req.sampling.stop
        if not stops:
            return False
        # Only the tail can hold a stop string that just appeared: decode enough tokens for the
        # longest one (each token is at least one byte, a character at most four), not the whole row.
        tail = self._decode_text(r.tokens[-(4 * max(map(len, stops)) + 8) :])
        return any(s in tail for s in stops)

    def _result(self, r: _Row) -> GenerationResult:
        return finish_row(
            r.tokens,
            sampling=r.req.sampling.model_copy(update={"max_tokens": r.cap}),
            eos_ids=self.eos_ids,
            pad_id=None,
            prompt_tokens=len(r.prompt_ids),
            decode=self._decode_text,
        )

    def _decode_text(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def _use_slots(self, slots: list[int]) -> None:
        """Tell the layers the row -> slot map of the next forward (re-gather only when it changed)."""
        if slots != self._slot_map:
            self._slot_map = slots
            self.batch.set(slots, self.device, rank=self._rank)

    # -- tiers ------------------------------------------------------------------

    def _slot_of(self, key: str) -> int | None:
        return next((i + 1 for i, s in enumerate(self.slots) if s.key == key), None)

    def _slot_for(self, row: _Row, *, pinned: Collection[str], wanted: Collection[str] = ()) -> int | None:
        """The row's slot: 0 for the base, a resident slot, or a slot it is copied into now from host memory."""
        if row.req.adapter is None:
            return 0
        key = row.req.adapter.key
        slot = self._slot_of(key)
        if slot is not None:
            return slot
        adapter = self.host.get(key)
        if adapter is None:
            self._start_load(row.req.adapter)  # no-op while it is loading
            return None
        slot = choose_slot(self.slots, pinned=pinned, wanted=wanted)
        if slot is None:
            return None
        self._to_slot(slot, adapter, name=row.req.adapter.name)
        return slot

    def _to_slot(self, slot: int, adapter: HostAdapter, *, name: str) -> None:
        started = time.perf_counter()
        old = self.slots[slot - 1].key
        if old is not None:
            self.slot_names.pop(old, None)
            metrics.ADAPTER_EVICTIONS.labels("slot").inc()
        for module, layer in self.layers.items():
            delta = adapter.modules.get(module)
            if delta is None:
                layer.load_slot(slot, None, None)
            else:
                a = delta.a.to(self.device, non_blocking=True)
                b = delta.b.to(self.device, non_blocking=True)
                layer.load_slot(slot, a, b)
        self.slots[slot - 1] = Slot(key=adapter.key, last_used=time.monotonic())
        self.slot_names[adapter.key] = name or adapter.key
        if adapter.key in self.host:
            self.host.move_to_end(adapter.key)
        self._ranks[slot] = adapter.rank
        self._rank = max(self._ranks.values())
        self._slot_map = None
        self.batch.touch()  # the slot's weights changed: the layers' copies are stale
        self._resident = frozenset(self.slot_names.values())
        self._loads += 1
        metrics.ADAPTER_LOADS.labels("slot").inc()
        metrics.ADAPTER_LOAD_SECONDS.labels("slot").observe(time.perf_counter() - started)
        metrics.RESIDENT_ADAPTERS.set(len(self.slot_names))

    def _start_load(self, ref: AdapterRef) -> None:
        if ref.key in self.host or ref.key in self.loading or self._slot_of(ref.key):
            return
        self.loading[ref.key] = self._loader.submit(self._read, ref)

    def _read(self, ref: AdapterRef) -> HostAdapter:
        started = time.perf_counter()
        path = local_dir(ref.uri, sha256=ref.sha256, cache_dir=self.cache_dir)
        adapter = read_adapter(
            path,
            key=ref.key,
            sha256=ref.sha256,
            shapes=self.shapes,
            known=self.module_names,
            r_max=self.r_max,
            dtype=self.dtype,
        )
        if self.device.type == "cuda":
            for delta in adapter.modules.values():  # pinned pages copy to the device asynchronously
                object.__setattr__(delta, "a", delta.a.pin_memory())
                object.__setattr__(delta, "b", delta.b.pin_memory())
        metrics.ADAPTER_LOADS.labels("host").inc()
        metrics.ADAPTER_LOAD_SECONDS.labels("host").observe(time.perf_counter() - started)
        return adapter

    def _collect_loads(self, pending: deque[_Row]) -> None:
        """Move finished background loads into the host cache; a failed load fails its waiting rows."""
        for key, future in list(self.loading.items()):
            if not future.done():
                continue
            del self.loading[key]
            exc = future.exception()
            if exc is None:
                self.host[key] = future.result()
                continue
            for row in [r for r in pending if r.key == key]:
                pending.remove(row)
                row.future.set_exception(exc)
        in_slots = {s.key for s in self.slots if s.key}
        sizes = [(k, a.nbytes) for k, a in self.host.items()]
        for key in host_evictions(sizes, budget=self.host_budget, keep=in_slots):
            del self.host[key]
            metrics.ADAPTER_EVICTIONS.labels("host").inc()

    # -- memory -------------------------------------------------------------------

    def _publish_memory_plan(self) -> None:
        plan = self.budget
        kv = plan.kv_tokens * plan.kv_bytes_per_token
        parts = {"budget": plan.budget, "weights": plan.weights, "slots": plan.slots, "activations": plan.activations}
        for part, value in {**parts, "kv": kv}.items():
            metrics.MEMORY_BUDGET.labels(part).set(value)
        metrics.KV_TOKENS.set(plan.kv_tokens)
        if self.device.type == "cuda":
            metrics.watch_device_memory(lambda: float(torch.cuda.memory_allocated(self.device)))

    def _plan_memory(self, budget_mb: int | None) -> memory.MemoryBudget:
        cfg = self.model.config.get_text_config()
        heads = int(cfg.num_attention_heads)
        head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
        per_token = memory.kv_bytes_per_token(
            layers=int(cfg.num_hidden_layers),
            kv_heads=int(getattr(cfg, "num_key_value_heads", None) or heads),
            head_dim=head_dim,
            dtype_bytes=torch.finfo(self.dtype).bits // 8,
        )
        weights = sum(p.numel() * p.element_size() for p in self.model.parameters())
        slots = sum(b.numel() * b.element_size() for layer in self.layers.values() for b in layer.buffers())
        if budget_mb is not None:
            budget = budget_mb * 2**20
        elif self.device.type == "cuda":
            budget = int(0.9 * torch.cuda.mem_get_info(self.device)[1])
        else:  # a quarter of the host's memory: room for the gateway, Redis and other workers
            budget = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
        return memory.plan(
            budget=budget, weights=weights, slots=slots, kv_per_token=per_token, min_tokens=self.max_positions
        )

    def close(self) -> None:
        self._inbox.put(None)
        self._thread.join(5)
        self._loader.shutdown(wait=False, cancel_futures=True)
