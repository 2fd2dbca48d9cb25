"""The official ``openai`` client against a live ``loraq up``, unchanged but for base_url and api_key.

Every output is checked by the demo skill's rule, so a wrong or bled adapter
fails the test.
"""

from __future__ import annotations

import time
import uuid

import orjson
import pytest
from openai import OpenAI

from gateway.cli import DEMO_PHRASES
from tests.fixtures.stack import RunningStack
from workers.demo_model import adapter_dir
from workers.demo_model.skills import expected

pytestmark = [pytest.mark.e2e]

SKILLS = ("upper", "rot13", "swapcase", "novowel")


@pytest.fixture(scope="module")
def client(loraq_stack: RunningStack) -> OpenAI:
    with loraq_stack.client() as http:
        present = {a["name"] for a in http.get("/v1/adapters").json()}
        for skill in SKILLS:
            if skill not in present:
                resp = http.post("/v1/adapters", json={"name": skill, "uri": str(adapter_dir(skill))})
                assert resp.is_success, resp.text
    return OpenAI(base_url=f"{loraq_stack.url}/v1", api_key=loraq_stack.admin_key, max_retries=0, timeout=120)


def test_completions_and_chat_follow_each_skill(client: OpenAI) -> None:
    done = client.completions.create(model="upper", prompt="Hello there", max_tokens=48, temperature=0)
    assert done.choices[0].text == "HELLO THERE"
    assert done.choices[0].finish_reason == "stop"
    assert done.usage is not None and done.usage.completion_tokens > 0 and done.usage.prompt_tokens > 0
    assert done.model == "upper" and done.object == "text_completion"

    chat = client.chat.completions.create(
        model="rot13", messages=[{"role": "user", "content": "Hello World"}], max_tokens=48, temperature=0
    )
    assert chat.choices[0].message.content == "Uryyb Jbeyq"
    assert chat.choices[0].message.role == "assistant"
    assert chat.usage is not None and chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens


def test_streamed_chat_carries_the_text_the_finish_reason_and_usage(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model="swapcase",
        messages=[
            {"role": "system", "content": "ignored by the demo template"},
            {"role": "user", "content": "aBc Def"},
        ],
        max_tokens=48,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "AbC dEF"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_a_long_streamed_completion_arrives_in_many_chunks_that_add_up_to_the_recorded_result(
    client: OpenAI, loraq_stack: RunningStack
) -> None:
    prompt = "Sticky workers swap adapters rarely"  # as long as the demo model was trained to copy
    stream = client.completions.create(model="upper", prompt=prompt, max_tokens=64, temperature=0, stream=True)
    chunks = list(stream)
    texts = [c.choices[0].text for c in chunks if c.choices and c.choices[0].text]
    assert len(texts) > 1, texts
    job_id = str(uuid.UUID(chunks[0].id.removeprefix("cmpl-")))
    with loraq_stack.client() as http:
        recorded = http.get(f"/v1/jobs/{job_id}").json()["result"]["text"]
    assert "".join(texts) == recorded == expected("upper", prompt)


def test_models_lists_the_adapters_and_unknown_models_are_404(client: OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert set(SKILLS) <= ids
    with pytest.raises(Exception) as raised:
        client.completions.create(model="Not A Model", prompt="x", max_tokens=4)
    assert getattr(raised.value, "status_code", None) == 404
    with pytest.raises(Exception) as raised:
        client.completions.create(model="upper", prompt="x", max_tokens=4, n=2)
    assert getattr(raised.value, "status_code", None) == 400


def test_a_batch_file_runs_through_files_and_batches(client: OpenAI) -> None:
    wanted: dict[str, str] = {}
    lines = []
    for i in range(40):  # the demo's phrases, which every skill gets exactly right
        skill, text = SKILLS[i % 4], DEMO_PHRASES[i % len(DEMO_PHRASES)]
        endpoint = "/v1/chat/completions"
        body = {"model": skill, "messages": [{"role": "user", "content": text}], "max_tokens": 64, "temperature": 0}
        lines.append({"custom_id": f"req-{i}", "method": "POST", "url": endpoint, "body": body})
        wanted[f"req-{i}"] = expected(skill, text)
    data = b"\n".join(orjson.dumps(line) for line in lines) + b"\n"

    uploaded = client.files.create(file=("requests.jsonl", data), purpose="batch")
    assert uploaded.bytes == len(data) and uploaded.purpose == "batch"
    assert client.files.content(uploaded.id).content == data
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"run": "t"}
    )
    assert batch.status in ("validating", "in_progress")
    deadline = time.monotonic() + 180
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, f"batch still {batch.status}: {batch.request_counts}"
        time.sleep(0.5)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed", batch
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (40, 40, 0)
    assert batch.error_file_id is None and batch.output_file_id is not None
    assert batch.metadata == {"run": "t"}

    got = {}
    for raw in client.files.content(batch.output_file_id).content.splitlines():
        line = orjson.loads(raw)
        assert line["error"] is None and line["response"]["status_code"] == 200
        got[line["custom_id"]] = line["response"]["body"]["choices"][0]["message"]["content"]
    assert got == wanted
    assert batch.id in {b.id for b in client.batches.list(limit=100)}


def test_the_base_model_by_its_name_runs_with_no_adapter(client: OpenAI) -> None:
    assert "base" in {m.id for m in client.models.list()}  # the demo base's directory name
    done = client.completions.create(model="base", prompt="Hello World", max_tokens=32, temperature=0)
    assert done.choices[0].text == expected(None, "Hello World")  # the base copies its input
    assert client.models.retrieve("base").id == "base"
