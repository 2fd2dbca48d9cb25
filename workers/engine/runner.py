"""The forwards of the loraq engine: the base model, its tokenizer, and the running batch's KV cache.

Every linear module of the decoder blocks is wrapped once at load
(:func:`workers.engine.layers.wrap`), so one forward serves rows of
different adapters; which slot each row uses is set on the shared
:class:`~workers.engine.layers.LoRABatch` by the adapter manager before each
forward. The runner keeps the running rows' KV cache in the scheduler's row
order (:class:`~workers.engine.kv.KVBatch`, slots allocated once by
:meth:`Runner.allocate_kv` from the memory plan): prefills add rows at the
end, retiring drops them and tells the scheduler the rows' new order. Each
row's positions are its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, PreTrainedModel

from registry.schemas import GenerationResult, SamplingParams
from workers.decoding import finish_row, streamable_text
from workers.engine import packed_attention
from workers.engine.config import EngineConfig
from workers.engine.kv import KVBatch
from workers.engine.layers import LoRABatch, SlotLayer
from workers.engine.quantize import quantize_base
from workers.engine.row import Row
from workers.engine.sampling import choose_tokens, row_generator
from workers.engine.wrap import wrap
from workers.errors import PromptTooLong
from workers.generation import GenRequest


class Runner:
    """Loads the base model on the calling thread (the engine's: see :class:`LoraEngine`)."""

    def __init__(self, config: EngineConfig) -> None:
        self.device = torch.device(config.device)
        self.dtype: torch.dtype = getattr(torch, config.dtype)
        self.name = config.base_model.name
        self.tokenizer = AutoTokenizer.from_pretrained(config.base_model)
        model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(config.base_model, dtype=self.dtype)
        self.model = model.to(self.device).eval()  # type: ignore[arg-type]
        # Slot 0 of every layer is the base model (no adapter); slots 1..max_loras hold adapters.
        self.batch: LoRABatch
        self.layers: dict[str, SlotLayer]
        self.batch, self.layers = wrap(
            self.model, slots=config.max_loras + 1, r_max=config.max_lora_rank, embeddings=config.embedding_lora
        )
        self.quantized = quantize_base(self.layers, mode=config.quantize, device=self.device, dtype=self.dtype)
        # Joins ride a decode step's forward, except on the int8 base: torch's dynamic int8 scales each
        # linear's input as one tensor, and a prompt's larger activations would coarsen the decode rows'.
        self.packs = config.packed_steps and not self.quantized and packed_attention.install(self.model)
        self.module_names = frozenset(name for name, _ in self.model.named_modules())
        eos = self.model.generation_config.eos_token_id
        self.eos_ids: set[int] = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else min(self.eos_ids, default=0))  # masked out anyway
        self.max_positions = int(getattr(self.model.config, "max_position_embeddings", 2048))
        self._kv: KVBatch | None = None

    def allocate_kv(self, *, slots: int, row_tokens: int) -> None:
        """Allocate the running batch's KV cache, once: ``slots`` rows of ``row_tokens`` (the memory plan's)."""
        self._kv = KVBatch(self.model.config, slots=slots, row_tokens=row_tokens, dtype=self.dtype, device=self.device)

    @property
    def kv(self) -> KVBatch:
        if self._kv is None:
            raise RuntimeError("the KV cache is allocated from the memory plan (Runner.allocate_kv) before decoding")
        return self._kv

    def prepare(self, index: int, req: GenRequest) -> Row:
        """A row for ``req``; refuses a prompt that leaves no room to generate in a KV slot."""
        ids: list[int] = self.tokenizer(req.prompt)["input_ids"]
        limit = self.kv.row_tokens  # the model's positions, or LORAQ_MAX_ROW_TOKENS if shorter
        room = limit - len(ids)
        if room < 1:
            raise PromptTooLong(
                f"prompt of {len(ids)} tokens leaves no room in a row's {limit} tokens (the model's positions, or "
                "LORAQ_MAX_ROW_TOKENS); shorten the prompt"
            )
        return Row(
            index=index,
            req=req,
            prompt_ids=ids,
            cap=min(req.sampling.max_tokens, room),  # prompt + cap <= limit: the row never outgrows its slot
            generator=row_generator(req.sampling, self.device),
        )

    def row_generator(self, sampling: SamplingParams) -> torch.Generator | None:
        return row_generator(sampling, self.device)

    # -- forwards ---------------------------------------------------------------------

    @torch.inference_mode()
    def prefill(self, rows: Sequence[Row]) -> None:
        cache = DynamicCache()
        logits, _ = self.forward_prompts(rows, cache=cache, last_only=True)
        self._append(rows, logits[:, -1, :])
        self.kv.add(cache, [len(r.prompt_ids) for r in rows])

    @torch.inference_mode()
    def decode(self, rows: Sequence[Row]) -> None:
        ids = torch.tensor([[r.tokens[-1]] for r in rows], dtype=torch.long, device=self.device)
        positions, mask = self.kv.decode_inputs()  # a row's position is its cached length
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, cache=self.kv.cache, use_cache=True
        )
        self._append(rows, out.logits[:, -1, :])

    def packed_tokens(self, running: Sequence[Row], joining: Sequence[Row]) -> list[int] | None:
        """Each row's tokens in a packed step of ``running`` then ``joining`` (:meth:`packed`), or None
        where this runner runs a join as a prefill of its own."""
        if not self.packs or not running or not joining:
            return None
        width = max(len(r.prompt_ids) for r in joining)
        return [1] * len(running) + [width] * len(joining)

    @torch.inference_mode()
    def packed(self, running: Sequence[Row], joining: Sequence[Row]) -> None:
        """One forward for a decode step of ``running`` and the prefill of ``joining``: every row gets one
        token, and the joining rows' KV joins the batch's after the running rows'."""
        positions, layout = self.kv.packed_inputs([len(r.prompt_ids) for r in joining])
        n, width = layout.decode, layout.width
        ids = torch.full((1, n + layout.joining * width), self.pad_id, dtype=torch.long)
        ids[0, :n] = torch.tensor([r.tokens[-1] for r in running])
        for j, r in enumerate(joining):
            end = n + (j + 1) * width
            ids[0, end - len(r.prompt_ids) : end] = torch.tensor(r.prompt_ids)
        last = torch.tensor([*range(n), *(n + (j + 1) * width - 1 for j in range(layout.joining))], device=self.device)
        unused = torch.ones((1, 1, 1, 1), dtype=torch.bool, device=self.device)  # the packed attention masks itself
        with packed_attention.packed_step(self.kv, layout):
            out = self.model(
                input_ids=ids.to(self.device),
                attention_mask=unused,
                position_ids=positions,
                cache=self.kv.cache,
                use_cache=True,
                logits_to_keep=last,
            )
        self._append([*running, *joining], out.logits[0])

    @torch.inference_mode()
    def score(self, rows: Sequence[Row]) -> list[torch.Tensor]:
        """Each row's logits at every prompt position, [prompt tokens, vocab]; no KV cache kept."""
        logits, _ = self.forward_prompts(rows, cache=None, last_only=False)
        return [logits[i, logits.shape[1] - len(r.prompt_ids) :] for i, r in enumerate(rows)]

    def forward_prompts(
        self, rows: Sequence[Row], *, cache: DynamicCache | None, last_only: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward over the rows' prompts, left-padded; returns logits [rows, width or 1, vocab] and
        the attention mask [rows, width]."""
        width = max(len(r.prompt_ids) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=cache is not None,
            logits_to_keep=1 if last_only else 0,
        )
        logits: torch.Tensor = out.logits
        return logits, mask

    def _append(self, rows: Sequence[Row], logits: torch.Tensor) -> None:
        tokens = choose_tokens(logits, [r.req.sampling for r in rows], [r.generator for r in rows])
        for r, t in zip(rows, tokens, strict=True):
            r.tokens.append(t)

    # -- the running batch's KV cache -----------------------------------------------------

    @torch.inference_mode()
    def keep(self, rows: list[int]) -> list[int]:
        return self.kv.keep(rows)

    def reset(self) -> None:
        self.kv.clear()

    # -- ending a row -------------------------------------------------------------------

    def finished(self, row: Row) -> bool:
        if row.cancelled or len(row.tokens) >= row.cap or row.tokens[-1] in self.eos_ids:
            return True
        stops = row.req.sampling.stop
        if not stops:
            return False
        # Only the tail can hold a stop string that just appeared: decode enough tokens for the
        # longest one (each token is at least one byte, a character at most four), not the whole row.
        tail = self.decode_text(row.tokens[-(4 * max(map(len, stops)) + 8) :])
        return any(s in tail for s in stops)

    def result(self, row: Row) -> GenerationResult:
        return finish_row(
            row.tokens,
            sampling=row.req.sampling.model_copy(update={"max_tokens": row.cap}),
            eos_ids=self.eos_ids,
            pad_id=None,
            prompt_tokens=len(row.prompt_ids),
            decode=self.decode_text,
        )

    def streamable(self, row: Row) -> str:
        """The row's text so far that its result will begin with. Decodes the whole row (a streamed
        row's cost per step grows with its length; rows that do not stream never pay it)."""
        sampling = row.req.sampling.model_copy(update={"max_tokens": row.cap})
        return streamable_text(row.tokens, sampling=sampling, eos_ids=self.eos_ids, decode=self.decode_text)

    def decode_text(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))
