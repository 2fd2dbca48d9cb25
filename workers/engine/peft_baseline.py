"""The PEFT baseline: generation with PEFT's mixed-adapter ``generate(adapter_names=...)``.

The foundation engine, kept as the baseline the loraq engine is measured
against (``LORAQ_ENGINE=peft``): the base model stays resident, adapters are loaded into one
``PeftModel`` by version key and evicted least-recently-used beyond
``max_loras``. Rows with equal sampling settings share one ``generate`` call.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, StoppingCriteria, StoppingCriteriaList

from registry.artifacts.checks import WEIGHTS_FILE
from registry.artifacts.uri import local_path
from registry.schemas import ChatMessage, GenerationResult, SamplingParams
from workers import chat
from workers.decoding import finish_row
from workers.engine.config import EngineConfig
from workers.errors import AdapterLoadFailed, PromptTooLong
from workers.generation import AdapterRef, GenRequest

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in adapter_names


class StopCancelled(StoppingCriteria):
    """Stops the rows of cancelled jobs at a step boundary; asks every ``every`` steps."""

    def __init__(self, job_ids: list[str], cancelled: Callable[[Sequence[str]], set[str]], every: int = 4) -> None:
        self.job_ids = job_ids
        self.cancelled = cancelled
        self.every = every
        self.step = 0
        self.stopped: set[str] = set()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object) -> torch.BoolTensor:
        self.step += 1
        if self.step % self.every == 0:
            self.stopped |= self.cancelled(self.job_ids)
        done = [job_id in self.stopped for job_id in self.job_ids]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


def sampling_group(req: GenRequest) -> tuple[object, ...]:
    """Rows that may share one generate call. Seeded sampling runs alone so
    its output does not depend on its batch-mates."""
    s = req.sampling
    if s.temperature == 0:
        return ("greedy",)
    if s.seed is not None:
        return ("seeded", req.job_id)
    return ("sample", s.temperature, s.top_p, s.top_k)


class PeftGenerator:
    """A :class:`~workers.generation.Generator`; of ``config`` it reads the base model, device, dtype
    and ``max_loras``."""

    def __init__(self, config: EngineConfig, *, cancelled: Callable[[Sequence[str]], set[str]] | None = None) -> None:
        self.cancelled = cancelled  # which of these job ids were cancelled (checked every few steps)
        self.device = torch.device(config.device)
        self.dtype = getattr(torch, config.dtype)
        self.max_loras = config.max_loras
        self.tokenizer = AutoTokenizer.from_pretrained(config.base_model)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        base: PreTrainedModel = AutoModelForCausalLM.from_pretrained(config.base_model, dtype=self.dtype)
        self.base = base.to(self.device).eval()  # type: ignore[arg-type]
        self.name = config.base_model.name
        self.model: PeftModel | None = None
        self.resident: OrderedDict[str, str] = OrderedDict()  # adapter key -> name, in LRU order
        self._resident_names: frozenset[str] = frozenset()  # snapshot for readers on other threads
        self._loads = 0
        eos = self.base.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.max_positions = int(getattr(self.base.config, "max_position_embeddings", 2048))

    def resident_adapters(self) -> frozenset[str]:
        return self._resident_names

    def adapter_loads(self) -> int:
        return self._loads

    def render_chat(self, messages: Sequence[ChatMessage]) -> str:
        return chat.render(self.tokenizer, messages)

    def describe(self) -> str:
        params = sum(p.numel() for p in self.base.parameters())
        size = sum(p.numel() * p.element_size() for p in self.base.parameters())
        return (
            f"PEFT engine: {self.name} on {self.device} ({self.dtype}), {params / 1e6:.2f}M params, "
            f"{size / 2**20:.1f} MiB weights, max_loras={self.max_loras}"
        )

    def generate(self, requests: Sequence[GenRequest]) -> list[GenerationResult]:
        results: dict[int, GenerationResult] = {}
        groups: dict[tuple[object, ...], list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(sampling_group(req), []).append(i)
        for indices in groups.values():
            for chunk in self._adapter_chunks([requests[i] for i in indices], indices):
                rows = [requests[i] for i in chunk]
                results.update(zip(chunk, self._generate_group(rows), strict=True))
        return [results[i] for i in range(len(requests))]

    def _adapter_chunks(self, rows: list[GenRequest], indices: list[int]) -> list[list[int]]:
        """Split so that no chunk needs more adapters than fit at once."""
        chunks: list[list[int]] = []
        keys: list[set[str]] = []
        for req, i in zip(rows, indices, strict=True):
            key = req.adapter.key if req.adapter else BASE_ADAPTER
            for chunk, seen in zip(chunks, keys, strict=True):
                if key in seen or len(seen - {BASE_ADAPTER}) < self.max_loras:
                    chunk.append(i)
                    seen.add(key)
                    break
            else:
                chunks.append([i])
                keys.append({key})
        return chunks

    def _ensure_resident(self, refs: dict[str, AdapterRef]) -> None:
        for key, ref in refs.items():
            if key in self.resident:
                self.resident.move_to_end(key)
                continue
            self._evict_for(set(refs))
            self._load(ref)
            self.resident[key] = ref.name
        self._resident_names = frozenset(self.resident.values())

    def _evict_for(self, needed: set[str]) -> None:
        while len(self.resident) >= self.max_loras:
            victim = next((k for k in self.resident if k not in needed), None)
            if victim is None or self.model is None:
                return
            self.model.delete_adapter(victim)
            del self.resident[victim]

    def _load(self, ref: AdapterRef) -> None:
        path = local_path(ref.uri)
        weights = path / WEIGHTS_FILE
        try:
            digest = hashlib.sha256(weights.read_bytes()).hexdigest()
        except OSError as exc:
            raise AdapterLoadFailed(f"cannot read adapter {ref.uri}: {exc}") from exc
        if digest != ref.sha256:
            raise AdapterLoadFailed(f"adapter {ref.uri} changed since registration (sha256 mismatch)")
        if self.model is None:
            self.model = PeftModel.from_pretrained(self.base, path, adapter_name=ref.key)
        else:
            self.model.load_adapter(path, adapter_name=ref.key)
        self.model.eval()
        self._loads += 1

    @torch.inference_mode()
    def _generate_group(self, rows: list[GenRequest]) -> list[GenerationResult]:
        refs = {r.adapter.key: r.adapter for r in rows if r.adapter is not None}
        self._ensure_resident(refs)
        enc = self.tokenizer([r.prompt for r in rows], return_tensors="pt", padding=True).to(self.device)
        prompt_len = enc["input_ids"].shape[1]
        lengths = [int(n) for n in enc["attention_mask"].sum(dim=1).tolist()]
        # Left padding: each row's positions start at 0, so its room is its own.
        rooms = [self.max_positions - n for n in lengths]
        if min(rooms) < 1:
            raise PromptTooLong(
                f"prompt of {max(lengths)} tokens leaves no room in the model's {self.max_positions} positions"
            )
        caps = [min(r.sampling.max_tokens, room) for r, room in zip(rows, rooms, strict=True)]
        sampling = rows[0].sampling
        kwargs = self._sampling_kwargs(sampling)
        if sampling.seed is not None and sampling.temperature > 0:
            torch.manual_seed(sampling.seed)
        max_new = max(caps)
        pad_id = self.tokenizer.pad_token_id
        stop: dict[str, object] = {}
        if self.cancelled is not None:
            stop["stopping_criteria"] = StoppingCriteriaList([StopCancelled([r.job_id for r in rows], self.cancelled)])
        if self.model is not None:
            names = [r.adapter.key if r.adapter else BASE_ADAPTER for r in rows]
            out = self.model.generate(  # type: ignore[no-untyped-call]
                **enc, adapter_names=names, max_new_tokens=max_new, pad_token_id=pad_id, **stop, **kwargs
            )
        else:
            out = self.base.generate(**enc, max_new_tokens=max_new, pad_token_id=pad_id, **stop, **kwargs)
        return [
            finish_row(
                out[i, prompt_len:].tolist(),
                sampling=row.sampling.model_copy(update={"max_tokens": caps[i]}),
                eos_ids=self.eos_ids,
                pad_id=pad_id if pad_id not in self.eos_ids else None,
                prompt_tokens=lengths[i],
                decode=self._decode,
            )
            for i, row in enumerate(rows)
        ]

    def _decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    @staticmethod
    def _sampling_kwargs(s: SamplingParams) -> dict[str, object]:
        if s.temperature == 0:
            return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        return {"do_sample": True, "temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k or None}
