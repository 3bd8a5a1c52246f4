"""Which addresses an outgoing call (an `http` job, a callback) may reach: public ones, unless
the server's `HttpPolicy` allows more. Standard library only, so that validating a job needs no
HTTP client."""

from __future__ import annotations

import socket
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

__all__ = ["HttpPolicy", "IPAddress", "IPNetwork", "category", "literal_address"]

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network


@dataclass(frozen=True)
class HttpPolicy:
    """Which addresses `http` jobs may call besides public ones.

    `allow_private` turns the check off: every address is allowed.
    `allowed_networks` allows the addresses of those networks only, e.g.
    `(ip_network("10.1.0.0/16"),)`. `hint` ends the refusal message: how an
    operator allows an address (the server names its setting there).
    """

    allow_private: bool = False
    allowed_networks: tuple[IPNetwork, ...] = ()
    hint: str = "allow it with the server's HTTP policy: allow_private or allowed_networks"

    def refusal(self, address: IPAddress) -> str | None:
        """Why `address` may not be called, or None when it may."""
        if self.allow_private:
            return None
        embedded = embedded_ipv4(address)
        candidates = (address,) if embedded is None else (address, embedded)
        if any(a in network for a in candidates for network in self.allowed_networks):
            return None
        kind = category(embedded if embedded is not None else address)
        if kind is None:
            return None
        return f"refused: {address} is {kind} address ({self.hint})"


def literal_address(host: str) -> IPAddress | None:
    """The address `host` names without a resolver, or None for a name."""
    # A resolver reads `127.0.0.1.` (an absolute name) as the address.
    host = host.removesuffix(".")
    try:
        return ip_address(host.strip("[]"))
    except ValueError:
        pass
    try:
        # The legacy forms (`127.1`, `2130706433`, `0x7f.1`) resolvers accept; no DNS name looks like these.
        return IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


_NAT64 = ip_network("64:ff9b::/96")


def embedded_ipv4(address: IPAddress) -> IPv4Address | None:
    """The IPv4 address an IPv6 one reaches: mapped (::ffff:a.b.c.d), NAT64 or 6to4. The
    deprecated IPv4-compatible form (::a.b.c.d) is refused whole, as reserved."""
    if isinstance(address, IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


_PRIVATE: tuple[IPNetwork, ...] = tuple(
    ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)
# Not public, though this Python's `is_global` may say otherwise: IETF protocol assignments,
# the 6to4 relay anycast, IPv4-compatible IPv6 (::a.b.c.d, which reaches the IPv4 address on some
# stacks), local-use NAT64, site-local, documentation (3fff::/20) and SRv6 segment identifiers.
_RESERVED: tuple[IPNetwork, ...] = tuple(
    ip_network(n)
    for n in (
        "192.0.0.0/24",
        "192.88.99.0/24",
        "::/96",
        "64:ff9b:1::/48",
        "fec0::/10",
        "3fff::/20",
        "5f00::/16",
    )
)


def category(address: IPAddress) -> str | None:
    """`a loopback`, `a private`...: what kind of non-public address this is; None for a public one."""
    checks: Iterable[tuple[bool, str]] = (
        (address.is_unspecified, "an unspecified"),
        (address.is_loopback, "a loopback"),
        (address.is_link_local, "a link-local"),
        (address.is_multicast, "a multicast"),
        (any(address in network for network in _PRIVATE), "a private"),
        (
            not address.is_global or any(address in network for network in _RESERVED),
            "a reserved (non-public)",
        ),
    )
    return next((name for matched, name in checks if matched), None)
