"""Which IP address made the request: the socket peer, or a client behind trusted proxies.

One pure implementation shared by the ASGI and WSGI middlewares. The rules:

- Nothing is trusted by default: the address is the socket peer, and ``X-Forwarded-For``
  and ``Forwarded`` are ignored entirely, since any client can send them.
- When the peer is in :class:`TrustedProxies`, the one forwarding header the proxies are
  configured to write (``X-Forwarded-For`` by default, or RFC 7239 ``Forwarded``; never
  both, because two chains written by different hops cannot be merged safely) is read
  right to left. Each proxy appends the address it received the request from, so the
  rightmost entries are written by our own proxies and the leftmost ones by whoever the
  client is. Trusted addresses are skipped; the first untrusted one is the client. If
  every entry is trusted, the leftmost is the client.
- The leftmost entry is never taken blindly: it is whatever the client chose to send.
- A malformed entry (empty, ``unknown``, an obfuscated ``_name``, a zone id, garbage, an
  entry longer than 64 characters) stops the walk, and the last good address is the
  answer, which is the proxy's own peer address in the worst case. Resolution never
  raises on header content.
- Repeated header lines count as one list, joined in order. At most :data:`MAX_HOPS`
  entries are examined, so a huge header costs no more than a short one.
- Entries may carry ports: ``1.2.3.4:80``, ``[2001:db8::1]:443``; IPv6 may come with or
  without brackets. Results are normalised by :mod:`ipaddress`; an IPv4-mapped IPv6
  address becomes the IPv4 address.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from typing import Final, NamedTuple, TypeAlias

from audit_mw.errors import ConfigurationError

__all__ = [
    "FORWARDED_HEADERS",
    "MAX_HOPS",
    "TrustedProxies",
    "parse_node",
    "resolve_client_ip",
]

IPAddress: TypeAlias = IPv4Address | IPv6Address

#: The forwarding headers a :class:`TrustedProxies` can be told to read.
FORWARDED_HEADERS: Final = ("x-forwarded-for", "forwarded")

#: How many entries of a forwarding chain are examined at most, from the right.
MAX_HOPS: Final = 16

# Longest sane node: "[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255]:65535" is 53.
_MAX_NODE_LENGTH: Final = 64

_UNIX: Final = "unix"


def _address(text: str) -> IPAddress | None:
    if "%" in text:
        # Zone ids are meaningless off the host and PostgreSQL's inet rejects them.
        return None
    try:
        address = ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_port(text: str) -> bool:
    return 0 < len(text) <= 5 and text.isascii() and text.isdigit()


class _Node(NamedTuple):
    address: IPAddress
    text: str  # normalised, as it will be recorded
    version: int
    value: int  # the address as an integer, for the network test


@lru_cache(maxsize=4096)
def _parse(text: str) -> _Node | None:
    # Cached: the same proxy and client addresses come back request after request, and
    # parsing plus str() of an address are the expensive steps of a resolution.
    text = text.strip(" \t")
    if not text or len(text) > _MAX_NODE_LENGTH:
        return None
    address: IPAddress | None
    if text[0] == "[":
        end = text.find("]")
        rest = text[end + 1 :]
        if end < 0 or (rest and not (rest[0] == ":" and _is_port(rest[1:]))):
            return None
        # Brackets are for IPv6 only: "[1.2.3.4]" is garbage, "[::ffff:1.2.3.4]" is not.
        address = _address(text[1:end]) if ":" in text[1:end] else None
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
        address = _address(host) if _is_port(port) else None
        if not isinstance(address, IPv4Address):
            return None
    else:
        address = _address(text)
    if address is None:
        return None
    return _Node(address, str(address), address.version, int(address))


def parse_node(text: str) -> IPAddress | None:
    """Parse one forwarding-chain entry; ``None`` when it is not a usable IP address.

    Accepts ``1.2.3.4``, ``1.2.3.4:80``, ``2001:db8::1``, ``[2001:db8::1]`` and
    ``[2001:db8::1]:443``, with surrounding spaces, and returns the normalised address
    (IPv4-mapped IPv6 becomes IPv4). Never raises.
    """
    node = _parse(text)
    return None if node is None else node.address


def _parse_forwarded_element(element: str) -> _Node | None:
    # An RFC 7239 element is "for=...;by=...;proto=..."; only "for" names the sender.
    for pair in element.split(";"):
        key, _, value = pair.partition("=")
        if key.strip(" \t").lower() == "for":
            value = value.strip(" \t")
            if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
                value = value[1:-1]
            return _parse(value)
    return None


def _is_unix_peer(peer: str | None) -> bool:
    # ASGI servers report no client for Unix sockets; WSGI servers an empty REMOTE_ADDR
    # or the socket path.
    return not peer or peer.startswith(("/", "unix:"))


class TrustedProxies:
    """The proxies whose forwarding header is believed; parsed once, immutable.

    ``cidrs`` lists networks (``10.0.0.0/8``, ``2001:db8::/32``) or single addresses
    (``127.0.0.1``); a single string is split on commas, so an environment variable can
    be passed as is. The word ``unix`` trusts a peer with no IP address, i.e. a proxy
    connected through a Unix socket. ``*`` is refused: trusting everyone would let any
    client choose its recorded address. A network with host bits set (``10.0.0.1/8``) is
    refused too, since it is usually a typo.

    ``header`` is the one forwarding header the proxies write: ``x-forwarded-for`` (the
    default) or ``forwarded`` (RFC 7239). The other one is ignored, so a client cannot
    smuggle an address through the header your proxies do not overwrite.

    Raises :class:`~audit_mw.errors.ConfigurationError` on anything it cannot parse.
    """

    __slots__ = ("_networks", "_unix", "cidrs", "header")

    def __init__(self, cidrs: Iterable[str] | str = (), *, header: str = "x-forwarded-for") -> None:
        header = header.lower() if isinstance(header, str) else header
        if header not in FORWARDED_HEADERS:
            raise ConfigurationError(
                f"unknown forwarding header {header!r}; use 'x-forwarded-for' or 'forwarded'"
            )
        if isinstance(cidrs, str):
            cidrs = [part for part in cidrs.split(",") if part.strip()]
        networks: list[tuple[int, int, int]] = []
        names: list[str] = []
        unix = False
        for raw in cidrs:
            if not isinstance(raw, str):
                raise ConfigurationError(f"trusted proxy {raw!r} must be a string")
            text = raw.strip()
            if text.lower() == _UNIX:
                unix = True
                names.append(_UNIX)
                continue
            if text == "*":
                raise ConfigurationError(
                    "trusted proxy '*' would let every client choose its recorded address;"
                    " list your proxies' networks instead"
                )
            try:
                network = ip_network(text)
            except ValueError:
                try:
                    fixed = ip_network(text, strict=False)
                except ValueError:
                    raise ConfigurationError(
                        f"trusted proxy {raw!r} is not an IP address or CIDR network"
                    ) from None
                raise ConfigurationError(
                    f"trusted proxy {raw!r} has host bits set; did you mean '{fixed}'?"
                ) from None
            # (version, network bits, mask): a membership test is two integer operations.
            networks.append((network.version, int(network.network_address), int(network.netmask)))
            names.append(str(network))
        self._networks: tuple[tuple[int, int, int], ...] = tuple(networks)
        self._unix = unix
        self.cidrs: tuple[str, ...] = tuple(names)
        self.header: str = header

    def __bool__(self) -> bool:
        return bool(self.cidrs)

    def __repr__(self) -> str:
        return f"TrustedProxies({list(self.cidrs)!r}, header={self.header!r})"

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, IPv4Address | IPv6Address):
            return False
        return self._holds(address.version, int(address))

    def _holds(self, version: int, value: int) -> bool:
        for net_version, bits, mask in self._networks:
            if version == net_version and value & mask == bits:
                return True
        return False

    def trusts_peer(self, peer: str | None) -> bool:
        """Whether the socket peer (an address string, or ``None``) is a trusted proxy."""
        if _is_unix_peer(peer):
            return self._unix
        node = _parse(peer) if peer else None
        return node is not None and self._holds(node.version, node.value)

    def resolve(self, peer: str | None, forwarded: Sequence[str]) -> str | None:
        """Like :func:`resolve_client_ip`, given the values of :attr:`header` in order.

        For callers that have already picked the header out, as the middlewares do.
        """
        peer_node = _parse(peer) if peer else None
        if not self._networks and not self._unix:
            return None if peer_node is None else peer_node.text
        if peer_node is None:
            if not (self._unix and _is_unix_peer(peer)):
                return None
        elif not self._holds(peer_node.version, peer_node.value):
            return peer_node.text
        best = peer_node
        if forwarded:
            entries = ",".join(forwarded).rsplit(",", MAX_HOPS)
            if len(entries) > MAX_HOPS:
                # The leftmost piece holds everything beyond the examined hops; leave it.
                del entries[0]
            parse = _parse if self.header == "x-forwarded-for" else _parse_forwarded_element
            for entry in reversed(entries):
                node = parse(entry)
                if node is None:
                    break
                best = node
                if not self._holds(node.version, node.value):
                    break
        return None if best is None else best.text


def resolve_client_ip(
    peer: str | None,
    headers: Iterable[tuple[str, str]],
    trusted: TrustedProxies,
) -> str | None:
    """The client's IP address, following the module's rules; ``None`` when there is none.

    ``peer`` is the socket peer as the server reports it (``scope["client"][0]`` or
    ``REMOTE_ADDR``). ``headers`` are ``(name, value)`` pairs; names are matched without
    regard to case and only ``trusted.header`` is read, and only when the peer is trusted.
    A peer that is not an IP address (a test client's name, a Unix socket) yields ``None``
    unless a trusted proxy behind it names the client. Never raises on header content.
    """
    if not trusted:
        return trusted.resolve(peer, ())
    wanted = trusted.header
    return trusted.resolve(peer, [value for name, value in headers if name.lower() == wanted])
