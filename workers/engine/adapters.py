"""The adapter manager: device slots, a host LRU cache by bytes, and loads in the background.

Three tiers. An adapter's files are on disk (the store's copy, via
:func:`local_dir`); a background thread reads them into host tensors
(:mod:`workers.engine.adapter_weights`) while its rows wait, so a cold
adapter never stalls the running batch; a row joins once its adapter is
copied into one of ``max_loras`` device slots of the mixed-LoRA layers.
Which slot an adapter takes, and which host copies are dropped, is decided by
the pure policy in :mod:`workers.engine.slots`; a slot a running row uses is
never evicted. Before each forward, :meth:`AdapterManager.activate` also asks
:mod:`workers.engine.merge_policy` whether one adapter that every row uses
should be merged into the base weights (the merged fast path), and merges or
unmerges (:mod:`workers.engine.merge`) before the forward runs.

Called from the engine's thread only (the loop, or ``score`` under the
scheduler's step lock), except :meth:`AdapterManager.resident` and
:meth:`AdapterManager.loads`, which read snapshots.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

import torch

from workers import metrics
from workers.engine import merge_policy, weight_pool
from workers.engine.adapter_weights import BaseModules, HostAdapter, ModuleDelta, read_adapter
from workers.engine.config import EngineConfig
from workers.engine.dora import magnitude_scale
from workers.engine.layers import LoRABatch, SlotLayer
from workers.engine.merge import Merger
from workers.engine.slots import Slot, choose_slot, host_evictions
from workers.engine.store import local_dir
from workers.generation import AdapterRef

log = logging.getLogger(__name__)


class AdapterManager:
    """Slot ``i`` of the layers holds ``self.slots[i - 1]``; slot 0 is the base model and never handed out."""

    def __init__(
        self,
        config: EngineConfig,
        *,
        layers: Mapping[str, SlotLayer],
        batch: LoRABatch,
        module_names: Collection[str],
        dora: bool = True,
    ) -> None:
        """``layers`` by module name and their shared ``batch``; ``module_names``: every module of the base
        (an adapter on one that is not in ``layers`` is refused precisely); ``dora``: DoRA is served."""
        self.device = torch.device(config.device)
        self.dtype: torch.dtype = getattr(torch, config.dtype)
        self.r_max = config.max_lora_rank
        self.host_budget = config.max_cpu_loras_mb * 2**20
        self.cache_dir = config.cache_dir or Path(tempfile.gettempdir()) / "loraq-adapter-cache"
        self.layers = layers
        self.batch = batch
        self.shapes = {name: (layer.in_features, layer.out_features) for name, layer in layers.items()}
        self.base = BaseModules(
            shapes=self.shapes,
            known=module_names,
            originals={name: layer.weight for name, layer in layers.items() if layer.is_edge},
            dora=dora,
        )
        self.merger = Merger(layers.values())
        self.merge_policy = merge_policy.MergePolicy() if config.merge_adapters else None
        self.merge_state = merge_policy.initial(self.merge_policy or merge_policy.MergePolicy())
        self.slots = [Slot(key=None, last_used=0.0) for _ in range(config.max_loras)]
        self.slot_names: dict[str, str] = {}  # adapter key -> name, for resident()
        self.host: OrderedDict[str, HostAdapter] = OrderedDict()  # LRU, oldest first
        self.loading: dict[str, Future[HostAdapter]] = {}
        self._loader = ThreadPoolExecutor(max_workers=2, thread_name_prefix="loraq-adapter-load")
        self._resident: frozenset[str] = frozenset()
        self._loads = 0
        self._slot_map: list[int] | None = None  # the row -> slot map the layers hold now
        self._pool = weight_pool.Pool()  # the adapters whose weights the layers hold gathered
        self._ranks: dict[int, int] = {}  # slot -> rank of the adapter in it
        self._rank = 0  # max rank over adapters in slots: the width the layers gather

    # -- snapshots, safe from any thread ----------------------------------------------

    def resident(self) -> frozenset[str]:
        """Names of the adapters in device slots."""
        return self._resident

    def loads(self) -> int:
        """Adapters copied into a slot since start (each is a swap)."""
        return self._loads

    # -- device slots -----------------------------------------------------------------

    def slot_of(self, key: str) -> int | None:
        return next((i + 1 for i, s in enumerate(self.slots) if s.key == key), None)

    def slot_for(self, ref: AdapterRef | None, *, pinned: Collection[str], wanted: Collection[str] = ()) -> int | None:
        """The slot rows of ``ref`` run in: 0 for the base, a resident slot, or one it is copied into now
        from host memory. None while it is not in host memory (its load is started) or every slot is
        ``pinned`` (in use by running rows); ``wanted`` adapters are evicted last."""
        if ref is None:
            return 0
        slot = self.slot_of(ref.key)
        if slot is not None:
            return slot
        adapter = self.host.get(ref.key)
        if adapter is None:
            self.start_load(ref)  # no-op while it is loading
            return None
        slot = choose_slot(self.slots, pinned=pinned, wanted=wanted)
        if slot is None:
            return None
        self.to_slot(slot, adapter, name=ref.name)
        return slot

    @torch.inference_mode()
    def to_slot(self, slot: int, adapter: HostAdapter, *, name: str) -> None:
        """Copy ``adapter`` into ``slot`` of every layer, evicting what it held."""
        started = time.perf_counter()
        old = self.slots[slot - 1].key
        if old is not None:
            self.slot_names.pop(old, None)
            metrics.ADAPTER_EVICTIONS.labels("slot").inc()
        if self.merger.slot == slot:
            self.merger.unmerge()
        self.merge_state = merge_policy.forget(self.merge_state, slot)
        for module, layer in self.layers.items():
            self._load_module(layer, slot, adapter.modules.get(module))
        self.slots[slot - 1] = Slot(key=adapter.key, last_used=time.monotonic())
        self.slot_names[adapter.key] = name or adapter.key
        if adapter.key in self.host:
            self.host.move_to_end(adapter.key)
        self._ranks[slot] = adapter.rank
        self._rank = max(self._ranks.values())
        self._slot_map = None
        self._pool = weight_pool.Pool()
        self.batch.touch()  # the slot's weights changed: the layers' copies are stale
        self._resident = frozenset(self.slot_names.values())
        self._loads += 1
        metrics.ADAPTER_LOADS.labels("slot").inc()
        metrics.ADAPTER_LOAD_SECONDS.labels("slot").observe(time.perf_counter() - started)
        metrics.RESIDENT_ADAPTERS.set(len(self.slot_names))

    def _load_module(self, layer: SlotLayer, slot: int, delta: ModuleDelta | None) -> None:
        if delta is None:
            layer.load_slot(slot, None, None)
            return
        a = delta.a.to(self.device, non_blocking=True)
        layer.load_slot(slot, a, delta.b.to(self.device, non_blocking=True))
        if delta.magnitude is None or delta.b_raw is None:
            layer.set_dora(slot, None)
            return
        g = magnitude_scale(
            self.merger.pristine(layer),
            a,
            delta.b_raw.to(self.device, non_blocking=True),
            scale=delta.scale,
            magnitude=delta.magnitude.to(self.device, non_blocking=True),
        )
        layer.set_dora(slot, g)

    def activate(self, slots: list[int], *, step: Collection[int] = (), tokens: list[int] | None = None) -> None:
        """Tell the layers the row -> slot map of the next forward (re-gathered only when it changed), and
        merge or unmerge an adapter as the merge policy says for it. ``step``: the slots of the step's other
        rows (the running rows, for a join's prefill), which the layers' weight pool then holds too, so the
        decode after the prefill gathers nothing (:mod:`workers.engine.weight_pool`); ``tokens``: each row's
        tokens in a packed forward (:meth:`~workers.engine.runner.Runner.packed`)."""
        if self.merge_policy is not None:
            self.merge_state = merge_policy.step(self.merge_state, slots, self.merge_policy)
            if self.merger.slot != self.merge_state.merged:
                self._switch_merge(self.merge_state.merged)
        pool = weight_pool.choose(self._pool, {*slots, *step} if any(slots) else ())
        if tokens is not None or slots != self._slot_map or pool.adapters != self._pool.adapters:
            self._slot_map = slots if tokens is None else None  # a packed map is never the next forward's
            self.batch.set(slots, self.device, rank=self._rank, pool=pool.adapters, tokens=tokens)
        self._pool = pool

    def _switch_merge(self, slot: int) -> None:
        """Unmerge what is merged (exactly), then merge ``slot`` (0: none). A merge that fails (out of
        memory for its copy) leaves the base unmerged and the rows on the side path, which is always
        correct; the policy then waits its longest before trying again."""
        if self.merger.slot:
            _timed("unmerge", self.merger.unmerge)
        if not slot:
            return
        try:
            _timed("merge", lambda: self.merger.merge(slot))
        except Exception as exc:  # the merge undid itself: nothing to repair, only a speed-up lost
            log.warning("merging slot %d into the base failed (%s); its rows run unmerged", slot, exc)
            policy = self.merge_policy or merge_policy.MergePolicy()
            self.merge_state = merge_policy.MergeState(wait=policy.max_wait)

    def deactivate(self) -> None:
        """Forget the map the layers hold (a failed step may have left it half set): the next
        :meth:`activate` sets it again."""
        self._slot_map = None
        self._pool = weight_pool.Pool()

    def touch(self, slots: Collection[int]) -> None:
        """Rows just ran in these slots (for least-recently-used eviction)."""
        now = time.monotonic()
        for slot in slots:
            self.slots[slot - 1] = Slot(key=self.slots[slot - 1].key, last_used=now)

    # -- host memory and background loads ---------------------------------------------------

    def start_load(self, ref: AdapterRef) -> None:
        """Read ``ref`` into host memory in the background, unless it is there, loading, or in a slot."""
        if ref.key in self.host or ref.key in self.loading or self.slot_of(ref.key):
            return
        self.loading[ref.key] = self._loader.submit(self.read, ref)

    def ensure_host(self, ref: AdapterRef) -> None:
        """Read ``ref`` into host memory now, on this thread, unless it is there."""
        if ref.key not in self.host:
            self.host[ref.key] = self.read(ref)

    def collect_loads(self) -> dict[str, BaseException]:
        """Move finished background loads into the host cache, then trim it to its budget (never an
        adapter in a slot). Returns the loads that failed, by adapter key."""
        failed: dict[str, BaseException] = {}
        for key, future in list(self.loading.items()):
            if not future.done():
                continue
            del self.loading[key]
            exc = future.exception()
            if exc is None:
                self.host[key] = future.result()
            else:
                failed[key] = exc
        in_slots = {s.key for s in self.slots if s.key}
        sizes = [(k, a.nbytes) for k, a in self.host.items()]
        for key in host_evictions(sizes, budget=self.host_budget, keep=in_slots):
            del self.host[key]
            metrics.ADAPTER_EVICTIONS.labels("host").inc()
        return failed

    def wait_for_load(self) -> None:
        """Nothing can run until an adapter arrives: wait briefly (new rows may arrive meanwhile)."""
        if self.loading:
            wait(list(self.loading.values()), timeout=0.05, return_when=FIRST_COMPLETED)
        else:
            time.sleep(0.001)

    def read(self, ref: AdapterRef) -> HostAdapter:
        """Fetch (disk tier), parse and check one adapter into host tensors; pinned pages on CUDA."""
        started = time.perf_counter()
        path = local_dir(ref.uri, sha256=ref.sha256, cache_dir=self.cache_dir)
        adapter = read_adapter(path, key=ref.key, sha256=ref.sha256, base=self.base, r_max=self.r_max, dtype=self.dtype)
        if self.device.type == "cuda":  # pinned pages copy to the device asynchronously
            adapter = dataclasses.replace(
                adapter, modules={name: _pinned(delta) for name, delta in adapter.modules.items()}
            )
        metrics.ADAPTER_LOADS.labels("host").inc()
        metrics.ADAPTER_LOAD_SECONDS.labels("host").observe(time.perf_counter() - started)
        return adapter

    def close(self) -> None:
        self._loader.shutdown(wait=False, cancel_futures=True)


def _timed(kind: str, change: Callable[[], None]) -> None:
    started = time.perf_counter()
    change()
    metrics.ADAPTER_MERGES.labels(kind).inc()
    metrics.ADAPTER_MERGE_SECONDS.labels(kind).observe(time.perf_counter() - started)


def _pinned(delta: ModuleDelta) -> ModuleDelta:
    def pin(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.pin_memory()

    return dataclasses.replace(
        delta, a=delta.a.pin_memory(), b=delta.b.pin_memory(), magnitude=pin(delta.magnitude), b_raw=pin(delta.b_raw)
    )
