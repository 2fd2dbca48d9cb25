"""Our signatures verify with the Standard Webhooks reference library, as a receiver would check them."""

from __future__ import annotations

import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from gateway.webhooks import signing


def test_a_signed_delivery_verifies_with_the_standard_webhooks_library() -> None:
    secret = signing.new_secret()
    body = b'{"type":"job.completed","data":{"id":"j1"}}'
    headers = signing.headers(secret, msg_id="evt_1", timestamp=int(time.time()), body=body)
    assert Webhook(secret).verify(body, headers) == {"type": "job.completed", "data": {"id": "j1"}}


def test_a_tampered_body_or_another_secret_does_not_verify() -> None:
    secret = signing.new_secret()
    body = b'{"a":1}'
    headers = signing.headers(secret, msg_id="evt_1", timestamp=int(time.time()), body=body)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(b'{"a":2}', headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.new_secret()).verify(body, headers)


def test_secrets_are_distinct_and_in_the_standard_format() -> None:
    a, b = signing.new_secret(), signing.new_secret()
    assert a != b and a.startswith("whsec_") and len(a) == len("whsec_") + 44
