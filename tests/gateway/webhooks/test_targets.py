"""The target guard: public addresses pass, the gateway's own networks are refused unless allowed."""

from __future__ import annotations

import pytest

from gateway.webhooks.targets import TargetRefused, check_syntax, check_target


def fixed(*addresses: str):  # type: ignore[no-untyped-def]
    return lambda host: list(addresses)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://[::1]/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://10.1.2.3/",
        "http://192.168.0.5/",
        "http://0.0.0.0/",
    ],
)
def test_private_loopback_and_link_local_literals_are_refused(url: str) -> None:
    with pytest.raises(TargetRefused) as err:
        check_target(url)
    assert err.value.code == "webhook_target_refused"


def test_a_name_that_resolves_to_a_private_address_is_refused() -> None:
    with pytest.raises(TargetRefused, match=r"10\.0\.0\.7"):
        check_target("https://hooks.example.com/x", resolver=fixed("93.184.216.34", "10.0.0.7"))


def test_a_public_name_passes() -> None:
    url = "https://hooks.example.com/x"
    assert check_target(url, resolver=fixed("93.184.216.34")) == url


def test_the_allow_list_admits_a_network_or_a_host() -> None:
    assert check_target("http://127.0.0.1:9/h", allow=["127.0.0.0/8"])
    assert check_target("http://hooks.internal/h", allow=["hooks.internal"], resolver=fixed("10.0.0.7"))
    with pytest.raises(TargetRefused):
        check_target("http://10.0.0.8/h", allow=["127.0.0.0/8", "not-a-network"])


@pytest.mark.parametrize(
    "url", ["ftp://example.com/x", "file:///etc/passwd", "http:///nohost", "https://u:p@example.com/"]
)
def test_urls_that_cannot_be_webhooks_are_refused_at_once(url: str) -> None:
    with pytest.raises(TargetRefused):
        check_syntax(url)
