"""The whole pipeline for real: ``loraq up`` -> HTTP -> Redis -> Celery worker -> registry.

Every output is checked by its demo skill's rule, so a wrong or bled adapter
fails the test, and every job row must say ``succeeded`` with its version.
"""

from __future__ import annotations

import random

import pytest
from sqlalchemy import select

from registry.db import make_engine, session_factory
from registry.models import AdapterVersion, Job
from tests.fixtures.stack import RunningStack
from workers.demo_model import DEMO_BASE, adapter_dir
from workers.demo_model.skills import SKILLS, expected, random_text

pytestmark = [pytest.mark.e2e]


def register_skills(stack: RunningStack) -> dict[str, int]:
    versions = {}
    with stack.client() as http:
        for skill in sorted(SKILLS):
            resp = http.post("/v1/adapters", json={"name": skill, "uri": str(adapter_dir(skill))})
            assert resp.status_code == 201, resp.text
            versions[skill] = resp.json()["versions"][-1]["version"]
    return versions


def peft_alone(work: list[tuple[str, str]]) -> list[str]:
    """Greedy answers of each (skill, text) with PEFT, one row and one adapter at a time."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(DEMO_BASE)
    base = AutoModelForCausalLM.from_pretrained(DEMO_BASE, dtype=torch.float32).eval()
    answers = {}
    for skill in sorted({s for s, _ in work}):
        model = PeftModel.from_pretrained(base, adapter_dir(skill)).eval()
        for i, (s, text) in enumerate(work):
            if s == skill:
                enc = tok([text], return_tensors="pt")
                with torch.inference_mode():
                    out = model.generate(**enc, max_new_tokens=64, do_sample=False)
                answers[i] = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        base = model.unload()
    return [answers[i] for i in range(len(work))]


@pytest.fixture(scope="module")
def registered(loraq_stack: RunningStack) -> dict[str, int]:
    return register_skills(loraq_stack)


def test_forty_mixed_jobs_follow_their_skill_and_are_recorded(
    loraq_stack: RunningStack, registered: dict[str, int]
) -> None:
    rng = random.Random(404)
    skills = sorted(SKILLS)
    work = [(skills[i % len(skills)], random_text(rng)) for i in range(40)]
    with loraq_stack.client() as http:
        ids = []
        for skill, text in work:
            resp = http.post("/v1/jobs", json={"adapter": skill, "prompt": text, "max_tokens": 64})
            assert resp.status_code == 202, resp.text
            ids.append(resp.json()["id"])
        views = []
        for job_id in ids:
            view = http.get(f"/v1/jobs/{job_id}", params={"wait": 60}).json()
            views.append(view)
    assert all(v["status"] == "succeeded" for v in views), loraq_stack.logs()
    outputs = [v["result"]["text"] for v in views]
    # No bleed: each row of a mixed batch answers exactly what its adapter alone answers (PEFT, batch of one).
    alone = peft_alone(work)
    bled = [(s, t, o, a) for (s, t), o, a in zip(work, outputs, alone, strict=True) if o != a]
    assert not bled, f"outputs differ from the adapter run alone: {bled}"
    # And the skills work: the demo model is >= 95 % exact on unseen text, here too.
    following = sum(o == expected(s, t) for (s, t), o in zip(work, outputs, strict=True))
    assert following >= 0.95 * len(work), f"only {following}/{len(work)} outputs follow their skill's rule"
    engine = make_engine(f"sqlite:///{loraq_stack.home / 'loraq.db'}")
    with session_factory(engine)() as session:
        rows = session.execute(select(Job, AdapterVersion.version).join(AdapterVersion).where(Job.id.in_(ids))).all()
    engine.dispose()
    assert len(rows) == 40
    for job, version in rows:
        assert job.status == "succeeded"
        assert job.attempts == 1
        assert job.worker and job.worker.startswith("worker1@")
        assert job.completion_tokens and job.prompt_tokens
        assert job.queue_wait_s is not None and job.run_time_s is not None
        assert version == registered[job.request["adapter"]]


def test_flower_lists_the_worker_and_every_adapter_queue_behind_auth(
    loraq_stack: RunningStack, registered: dict[str, int]
) -> None:
    import httpx

    workers = httpx.get(f"{loraq_stack.flower_url}/api/workers", auth=loraq_stack.flower_auth, timeout=10).json()
    assert any(name.startswith("worker1@") for name in workers)
    queues = httpx.get(f"{loraq_stack.flower_url}/api/queues/length", auth=loraq_stack.flower_auth, timeout=10)
    names = {q["name"] for q in queues.json()["active_queues"]}
    assert {f"lora.{s}" for s in SKILLS} <= names
    anonymous = httpx.get(f"{loraq_stack.flower_url}/api/workers", timeout=10)
    assert anonymous.status_code == 401


def test_an_adapter_in_a_path_with_a_space_and_a_non_ascii_letter_serves_jobs(loraq_stack: RunningStack) -> None:
    """The gateway records a percent-encoded file:// URI; the worker must decode it the same way."""
    import shutil

    odd = loraq_stack.home / "adapters" / "caps lock é"
    shutil.copytree(adapter_dir("upper"), odd, dirs_exist_ok=True)
    with loraq_stack.client() as http:
        resp = http.post("/v1/adapters", json={"name": "odd-path", "uri": str(odd)})
        assert resp.status_code == 201, resp.text
        assert "%20" in resp.json()["versions"][-1]["uri"]  # stored encoded, as the registry writes URIs
        job = http.post("/v1/jobs", json={"adapter": "odd-path", "prompt": "served anyway", "max_tokens": 32})
        assert job.status_code == 202, job.text
        view = http.get(f"/v1/jobs/{job.json()['id']}", params={"wait": 60}).json()
    assert view["status"] == "succeeded", (view, loraq_stack.logs())
    assert view["result"]["text"] == expected("upper", "served anyway")
