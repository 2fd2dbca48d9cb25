"""Which URLs a webhook may be sent to: the guard against server-side request forgery.

A webhook URL comes from a tenant; without a guard, the gateway would post to
its own network on the tenant's behalf (cloud metadata at 169.254.169.254,
an admin port on localhost, a database on 10.x). Only ``http``/``https`` URLs
whose host resolves to public addresses are accepted, unless the address or
host is in ``LORAQ_WEBHOOK_ALLOW`` (comma-separated hosts or networks, e.g.
``127.0.0.1/32,hooks.internal``), which the tests use for their loopback
receiver. The check runs at registration (syntax and scheme, so a bad URL is
a 422 at once) and again before every attempt (DNS may have changed).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from registry.errors import InvalidRequest

Resolver = Callable[[str], list[str]]


class TargetRefused(InvalidRequest):
    code = "webhook_target_refused"


def resolve(host: str) -> list[str]:
    return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)})


def check_syntax(url: str) -> str:
    """The URL if it can be a webhook target at all; raises :class:`TargetRefused` otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TargetRefused(f"webhook URL {url!r} must be an http:// or https:// URL with a host.")
    if parts.username or parts.password:
        raise TargetRefused("webhook URL must not carry credentials; sign with the tenant's webhook secret instead.")
    if len(url) > 2000:
        raise TargetRefused("webhook URL is longer than 2,000 characters.")
    return url


def _allowed(host: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address, allow: Sequence[str]) -> bool:
    for entry in allow:
        if entry == host:
            return True
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


def check_target(url: str, *, allow: Sequence[str] = (), resolver: Resolver = resolve) -> str:
    """Raise :class:`TargetRefused` unless every address ``url``'s host resolves to is public or allowed."""
    host = urlsplit(check_syntax(url)).hostname or ""
    try:
        addresses = (
            [ipaddress.ip_address(host)] if _is_literal(host) else [ipaddress.ip_address(a) for a in resolver(host)]
        )
    except OSError as exc:
        raise TargetRefused(f"webhook host {host!r} does not resolve ({exc}).") from exc
    if not addresses:
        raise TargetRefused(f"webhook host {host!r} does not resolve.")
    for address in addresses:
        if not address.is_global and not _allowed(host, address, allow):
            raise TargetRefused(
                f"webhook host {host!r} resolves to {address}, a private, loopback or link-local address; "
                "webhooks go to public addresses only (an operator can allow one with LORAQ_WEBHOOK_ALLOW)."
            )
    return url


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
