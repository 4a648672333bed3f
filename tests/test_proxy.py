"""Client IP resolution: one table of cases, also run through both middlewares."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

import pytest

from audit_mw.errors import ConfigurationError
from audit_mw.web.proxy import MAX_HOPS, TrustedProxies, parse_node, resolve_client_ip

PROXY = "10.0.0.1"  # the socket peer when a request comes through our proxy
CLIENT = "203.0.113.7"
XFF = "x-forwarded-for"


@dataclass(frozen=True)
class ProxyCase:
    """One request as a server reports it, and the client IP that must be recorded."""

    id: str
    peer: str | None
    headers: tuple[tuple[str, str], ...]
    expected: str | None
    trusted: tuple[str, ...] = ("10.0.0.0/8",)
    header: str = XFF


def xff(*values: str) -> tuple[tuple[str, str], ...]:
    return tuple((XFF, value) for value in values)


def fwd(*values: str) -> tuple[tuple[str, str], ...]:
    return tuple(("forwarded", value) for value in values)


PROXY_CASES: tuple[ProxyCase, ...] = (
    # Nothing trusted: the socket peer, whatever the headers say.
    ProxyCase("untrusted-spoofed-xff", CLIENT, xff("1.1.1.1"), CLIENT, trusted=()),
    ProxyCase("untrusted-spoofed-forwarded", CLIENT, fwd("for=1.1.1.1"), CLIENT, trusted=()),
    ProxyCase("untrusted-mapped-peer", "::ffff:192.0.2.1", (), "192.0.2.1", trusted=()),
    ProxyCase("untrusted-ipv6-peer", "2001:0db8::0001", (), "2001:db8::1", trusted=()),
    ProxyCase("untrusted-name-peer", "testclient", xff("1.1.1.1"), None, trusted=()),
    ProxyCase("untrusted-no-peer", None, xff("1.1.1.1"), None, trusted=()),
    # A peer outside the trusted networks is the client, even with a header.
    ProxyCase("peer-not-trusted", CLIENT, xff("1.1.1.1"), CLIENT),
    # Through a trusted proxy.
    ProxyCase("trusted-no-header", PROXY, (), PROXY),
    ProxyCase("trusted-one-hop", PROXY, xff(CLIENT), CLIENT),
    ProxyCase("trusted-spoof-on-left", PROXY, xff("1.1.1.1", CLIENT), CLIENT),
    ProxyCase("trusted-spoof-in-one-value", PROXY, xff(f"1.1.1.1, {CLIENT}"), CLIENT),
    ProxyCase("trusted-two-proxies", PROXY, xff(f"{CLIENT}, 10.0.0.2, 10.0.0.3"), CLIENT),
    ProxyCase("all-trusted-leftmost", PROXY, xff("10.0.0.9, 10.0.0.2"), "10.0.0.9"),
    ProxyCase("repeated-headers-in-order", PROXY, xff("1.1.1.1", "10.0.0.2"), "1.1.1.1"),
    ProxyCase("repeated-headers-last-wins", PROXY, xff("1.1.1.1", "2.2.2.2"), "2.2.2.2"),
    ProxyCase("header-name-case", PROXY, (("X-Forwarded-For", CLIENT),), CLIENT),
    ProxyCase("spaces-and-tabs", PROXY, xff(f" \t{CLIENT} \t"), CLIENT),
    # Malformed entries stop the walk; the last good address wins.
    ProxyCase("unknown", PROXY, xff("unknown"), PROXY),
    ProxyCase("client-then-unknown", PROXY, xff(f"{CLIENT}, unknown"), PROXY),
    ProxyCase("unknown-then-proxy", PROXY, xff("unknown, 10.0.0.2"), "10.0.0.2"),
    ProxyCase("obfuscated", PROXY, xff("_hidden"), PROXY),
    ProxyCase("garbage", PROXY, xff("not-an-ip"), PROXY),
    ProxyCase("garbage-behind-client", PROXY, xff(f"evil, {CLIENT}"), CLIENT),
    ProxyCase("empty-value", PROXY, xff(""), PROXY),
    ProxyCase("empty-entry", PROXY, xff(f"{CLIENT},,10.0.0.2"), "10.0.0.2"),
    ProxyCase("trailing-comma", PROXY, xff(f"{CLIENT},"), PROXY),
    ProxyCase("quoted-xff", PROXY, xff(f'"{CLIENT}"'), PROXY),
    ProxyCase("leading-zeros", PROXY, xff("01.2.3.4"), PROXY),
    ProxyCase("zone-id", PROXY, xff("fe80::1%eth0"), PROXY),
    ProxyCase("bracketed-ipv4", PROXY, xff("[1.2.3.4]"), PROXY),
    ProxyCase("bad-port", PROXY, xff("1.2.3.4:http"), PROXY),
    ProxyCase("empty-port", PROXY, xff("[2001:db8::1]:"), PROXY),
    ProxyCase("unclosed-bracket", PROXY, xff("[2001:db8::1"), PROXY),
    ProxyCase("port-too-long", PROXY, xff("1.2.3.4:123456"), PROXY),
    # Ports, brackets, IPv6, mapped addresses.
    ProxyCase("ipv4-with-port", PROXY, xff("1.2.3.4:80"), "1.2.3.4"),
    ProxyCase("ipv6-plain", PROXY, xff("2001:db8::1"), "2001:db8::1"),
    ProxyCase("ipv6-brackets", PROXY, xff("[2001:db8::1]"), "2001:db8::1"),
    ProxyCase("ipv6-brackets-port", PROXY, xff("[2001:db8::1]:443"), "2001:db8::1"),
    ProxyCase("ipv6-uncompressed", PROXY, xff("2001:0db8:0:0:0:0:0:1"), "2001:db8::1"),
    ProxyCase("ipv4-mapped", PROXY, xff("::ffff:1.2.3.4"), "1.2.3.4"),
    ProxyCase("ipv4-mapped-brackets", PROXY, xff("[::ffff:1.2.3.4]:8080"), "1.2.3.4"),
    ProxyCase("mapped-peer-trusted", "::ffff:10.0.0.1", xff(CLIENT), CLIENT),
    ProxyCase("ipv6-proxy", "2001:db8::5", xff(CLIENT), CLIENT, trusted=("2001:db8::/64",)),
    ProxyCase("loopback-proxy", "127.0.0.1", xff(CLIENT), CLIENT, trusted=("127.0.0.1",)),
    # Huge headers: bounded work, never an error.
    ProxyCase("8kb-of-hops", PROXY, xff("1.1.1.1, " * 1000 + CLIENT), CLIENT),
    ProxyCase("8kb-single-token", PROXY, xff("9" * 8192), PROXY),
    ProxyCase(
        "client-beyond-max-hops",
        PROXY,
        xff(CLIENT + ", 10.0.0.2" * (MAX_HOPS + 4)),
        "10.0.0.2",
    ),
    ProxyCase(
        "client-at-max-hops",
        PROXY,
        xff(CLIENT + ", 10.0.0.2" * (MAX_HOPS - 1)),
        CLIENT,
    ),
    # RFC 7239 Forwarded, when the proxies are configured to write it.
    ProxyCase(
        "forwarded",
        PROXY,
        fwd("for=192.0.2.60;proto=http;by=10.0.0.1"),
        "192.0.2.60",
        header="forwarded",
    ),
    ProxyCase("forwarded-key-case", PROXY, fwd("For=192.0.2.60"), "192.0.2.60", header="forwarded"),
    ProxyCase(
        "forwarded-quoted-ipv6-port",
        PROXY,
        fwd('for="[2001:db8:cafe::17]:4711"'),
        "2001:db8:cafe::17",
        header="forwarded",
    ),
    ProxyCase(
        "forwarded-chain",
        PROXY,
        fwd(f"for=1.1.1.1, for={CLIENT}, for=10.0.0.2"),
        CLIENT,
        header="forwarded",
    ),
    ProxyCase("forwarded-unknown", PROXY, fwd("for=unknown"), PROXY, header="forwarded"),
    ProxyCase("forwarded-obfuscated", PROXY, fwd("for=_gazonk"), PROXY, header="forwarded"),
    ProxyCase("forwarded-no-for", PROXY, fwd("proto=https;by=10.0.0.1"), PROXY, header="forwarded"),
    ProxyCase(
        "forwarded-unquoted-ipv6-port",
        PROXY,
        fwd("for=[2001:db8::1]:80"),
        "2001:db8::1",
        header="forwarded",
    ),
    # The header the proxies do not write is ignored, both ways round.
    ProxyCase("xff-ignored-when-forwarded", PROXY, xff("1.1.1.1"), PROXY, header="forwarded"),
    ProxyCase("forwarded-ignored-when-xff", PROXY, fwd("for=1.1.1.1"), PROXY),
    # Unix-socket proxies.
    ProxyCase("unix-peer-trusted", None, xff(CLIENT), CLIENT, trusted=("unix",)),
    ProxyCase("unix-peer-no-header", None, (), None, trusted=("unix",)),
    ProxyCase("unix-peer-not-trusted", None, xff(CLIENT), None),
)


@pytest.mark.parametrize("case", PROXY_CASES, ids=lambda case: case.id)
def test_resolve_client_ip(case: ProxyCase) -> None:
    trusted = TrustedProxies(case.trusted, header=case.header)
    assert resolve_client_ip(case.peer, case.headers, trusted) == case.expected
    # The middlewares pick the header's values out themselves and call resolve().
    picked = [value for name, value in case.headers if name.lower() == case.header]
    assert trusted.resolve(case.peer, picked) == case.expected


def test_case_ids_are_unique() -> None:
    ids = [case.id for case in PROXY_CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.2.3.4", IPv4Address("1.2.3.4")),
        ("1.2.3.4:80", IPv4Address("1.2.3.4")),
        ("[2001:db8::1]:443", IPv6Address("2001:db8::1")),
        ("::ffff:1.2.3.4", IPv4Address("1.2.3.4")),
        ("unknown", None),
        ("", None),
        ("1.2.3.4:", None),
        ("[::1]x", None),
        ("x" * 100, None),
    ],
)
def test_parse_node(text: str, expected: IPv4Address | IPv6Address | None) -> None:
    assert parse_node(text) == expected


def test_trusted_proxies_parses_once_and_reports() -> None:
    trusted = TrustedProxies(["10.0.0.0/8", " 192.0.2.1 ", "2001:db8::/32", "UNIX"])
    assert trusted.cidrs == ("10.0.0.0/8", "192.0.2.1/32", "2001:db8::/32", "unix")
    assert IPv4Address("10.9.8.7") in trusted
    assert IPv4Address("192.0.2.2") not in trusted
    assert IPv6Address("2001:db8::42") in trusted
    assert "10.0.0.1" not in trusted  # addresses, not strings
    assert trusted.trusts_peer(None)
    assert trusted.trusts_peer("/run/app.sock")
    assert not trusted.trusts_peer("testclient")
    assert bool(trusted)
    assert not TrustedProxies()
    assert "10.0.0.0/8" in repr(trusted)


def test_trusted_proxies_accepts_a_comma_separated_string() -> None:
    assert TrustedProxies("10.0.0.0/8, 127.0.0.1,").cidrs == ("10.0.0.0/8", "127.0.0.1/32")


@pytest.mark.parametrize(
    ("cidrs", "message"),
    [
        (["10.0.0.0/33"], "not an IP address or CIDR network"),
        (["proxy.internal"], "not an IP address or CIDR network"),
        (["10.0.0.1/8"], "did you mean '10.0.0.0/8'"),
        (["*"], "every client"),
        ([10], "must be a string"),
    ],
)
def test_trusted_proxies_rejects_bad_config(cidrs: list[object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        TrustedProxies(cidrs)  # type: ignore[arg-type]  # bad input on purpose


def test_trusted_proxies_rejects_unknown_header() -> None:
    with pytest.raises(ConfigurationError, match="unknown forwarding header 'x-real-ip'"):
        TrustedProxies(["10.0.0.0/8"], header="x-real-ip")


def test_header_choice_is_case_insensitive() -> None:
    assert TrustedProxies(header="Forwarded").header == "forwarded"
