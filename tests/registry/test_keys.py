"""API keys: shown once, stored as a digest, refused when wrong or revoked."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from registry.db import transaction
from registry.errors import Unauthenticated
from registry.keys import authenticate, create_key, revoke_key
from registry.models import ApiKey


def test_key_is_returned_once_and_only_its_hash_is_stored(session_factory: sessionmaker[Session]) -> None:
    with transaction(session_factory) as session:
        key = create_key(session, tenant_name="acme")
        again = create_key(session, tenant_name="acme")

    assert key != again
    with session_factory() as session:
        rows = session.execute(select(ApiKey.__table__)).all()
    assert len(rows) == 2
    stored = [str(value) for row in rows for value in row]
    assert not any(key in value or again in value for value in stored)
    assert {row.key_hash for row in rows} == {hashlib.sha256(k.encode()).hexdigest() for k in (key, again)}


def test_authenticate_returns_the_keys_tenant(session_factory: sessionmaker[Session]) -> None:
    with transaction(session_factory) as session:
        acme_key = create_key(session, tenant_name="acme")
        globex_key = create_key(session, tenant_name="globex")

    with session_factory() as session:
        assert authenticate(session, key=acme_key).name == "acme"
        assert authenticate(session, key=globex_key).name == "globex"


@pytest.mark.parametrize("wrong", ["", "lq-not-a-key", "Bearer lq-x"])
def test_wrong_key_is_unauthenticated(session_factory: sessionmaker[Session], wrong: str) -> None:
    with transaction(session_factory) as session:
        create_key(session, tenant_name="acme")

    with session_factory() as session, pytest.raises(Unauthenticated) as caught:
        authenticate(session, key=wrong)
    assert caught.value.code == "invalid_api_key"


def test_revoked_key_is_refused_and_other_keys_still_work(session_factory: sessionmaker[Session]) -> None:
    with transaction(session_factory) as session:
        revoked = create_key(session, tenant_name="acme")
        kept = create_key(session, tenant_name="acme")

    with transaction(session_factory) as session:
        assert revoke_key(session, key_prefix=revoked) == 1

    with session_factory() as session:
        with pytest.raises(Unauthenticated) as caught:
            authenticate(session, key=revoked)
        assert caught.value.code == "invalid_api_key"
        assert authenticate(session, key=kept).name == "acme"

    with transaction(session_factory) as session:
        assert revoke_key(session, key_prefix=revoked) == 0
