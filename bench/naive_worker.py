"""The naive baseline of ``bench/e2e.py``: one Celery task per job, PEFT ``set_adapter`` per job.

This is what a team writes first: a prefork-style worker that runs one job
at a time, switches the PeftModel's active adapter to the job's, generates,
and records the result. It consumes the same ``lora.<name>`` queues with the
same task name and records through the same registry code as the real
worker, so the benchmark compares only the worker. Run by ``bench/e2e.py``::

    PYTHONPATH=bench celery -A naive_worker worker -P solo -Q lora.a,lora.b
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from registry.artifacts.checks import WEIGHTS_FILE
from registry.artifacts.uri import local_path
from registry.db import engine_from_settings, session_factory
from registry.schemas import GenerationResult
from workers.contract.celery_app import Role, make_celery
from workers.decoding import finish_row
from workers.errors import AdapterLoadFailed
from workers.generation import AdapterRef, GenRequest
from workers.runtime import Runtime
from workers.settings import WorkerSettings
from workers.tasks import register_tasks


class NaiveGenerator:
    """One row at a time: ``set_adapter`` then ``generate``; every adapter stays loaded."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(settings.base_model)
        self.base = AutoModelForCausalLM.from_pretrained(settings.base_model, dtype=getattr(torch, settings.dtype))
        self.base.eval()
        self.model: PeftModel | None = None
        self.loaded: set[str] = set()
        self._loads = 0
        eos = self.base.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])

    def resident_adapters(self) -> frozenset[str]:
        return frozenset(self.loaded)

    def describe(self) -> str:
        return "naive baseline: one job per task, PEFT set_adapter per job"

    def adapter_loads(self) -> int:
        return self._loads

    def _activate(self, ref: AdapterRef) -> PeftModel:
        if ref.key not in self.loaded:
            path = local_path(ref.uri)
            if hashlib.sha256((path / WEIGHTS_FILE).read_bytes()).hexdigest() != ref.sha256:
                raise AdapterLoadFailed(f"adapter {ref.uri} changed since registration")
            if self.model is None:
                self.model = PeftModel.from_pretrained(self.base, path, adapter_name=ref.key)
            else:
                self.model.load_adapter(path, adapter_name=ref.key)
            self.model.eval()
            self.loaded.add(ref.key)
            self._loads += 1
        assert self.model is not None
        self.model.set_adapter(ref.key)
        return self.model

    @torch.inference_mode()
    def generate(self, requests: Sequence[GenRequest]) -> list[GenerationResult]:
        results = []
        for req in requests:
            assert req.adapter is not None, "the benchmark sends adapter jobs only"
            model = self._activate(req.adapter)
            enc = self.tokenizer(req.prompt, return_tensors="pt")
            out = model.generate(
                **enc,
                max_new_tokens=req.sampling.max_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=self.tokenizer.pad_token_id,
            )
            prompt_len = enc["input_ids"].shape[1]
            results.append(
                finish_row(
                    out[0, prompt_len:].tolist(),
                    sampling=req.sampling,
                    eos_ids=self.eos_ids,
                    pad_id=None,
                    prompt_tokens=prompt_len,
                    decode=lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True),
                )
            )
        return results


settings = WorkerSettings()
app = make_celery(settings.queue, role=Role.WORKER)
app.conf.update(worker_pool="solo", worker_concurrency=1)
_runtime = Runtime(
    generator=NaiveGenerator(settings),
    sessions=session_factory(engine_from_settings(settings.db)),
    worker_name="naive",
    max_rows=1,
    wait_s=0.0,
)
register_tasks(app, lambda: _runtime)
