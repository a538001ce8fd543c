# -*- test-case-name: tests.test_forwarded -*-
"""
Who a request comes from when it reaches memmq through proxies: the
C{--trusted_proxies} whose C{X-Forwarded-For} and C{X-Forwarded-Proto} are
believed (README, "Behind a proxy").

A request's peer is the client unless the peer is a trusted proxy; then the
client is the last address in C{X-Forwarded-For} that is not itself a
trusted proxy (addresses further left were written by whoever sent the
request to the first trusted proxy, and anyone can write anything there).
The access log and access control ask L{client_address}; nothing else
reads those headers.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

from memmq.errors import MemmqError

__all__ = ["NO_PROXIES", "ClientAddress", "TrustedProxies", "client_address", "parse_trusted_proxies"]

_FORWARDED_FOR = b"x-forwarded-for"
_FORWARDED_PROTO = b"x-forwarded-proto"


class TrustedProxiesError(MemmqError, ValueError):
    """
    A C{--trusted_proxies} entry that is neither an address, a network nor
    C{unix}.
    """


@dataclass(frozen=True)
class TrustedProxies:
    """
    The proxies whose forwarding headers are believed: networks, and
    whether a peer on a UNIX socket is one.
    """

    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    unix: bool = False

    def trusts(self, host: str) -> bool:
        """
        Whether the address C{host} (text) is a trusted proxy's.
        """
        if not self.networks:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def __bool__(self) -> bool:
        return bool(self.networks) or self.unix


NO_PROXIES = TrustedProxies()


def parse_trusted_proxies(entries: Iterable[str]) -> TrustedProxies:
    """
    C{--trusted_proxies} entries (each comma-separated list of addresses,
    networks such as C{10.0.0.0/8}, or C{unix} for a peer on a UNIX socket).

    @raise TrustedProxiesError: an entry that is none of those.
    """
    networks = []
    unix = False
    for entry in entries:
        for item in entry.split(","):
            item = item.strip()
            if not item:
                continue
            if item.lower() == "unix":
                unix = True
                continue
            try:
                networks.append(ipaddress.ip_network(item.strip("[]"), strict=False))
            except ValueError:
                raise TrustedProxiesError(
                    f"--trusted_proxies: {item!r} is not an address, a network (10.0.0.0/8) or unix"
                ) from None
    return TrustedProxies(tuple(networks), unix)


@dataclass(frozen=True)
class ClientAddress:
    """
    Where a request comes from: the client's address (text; C{"-"} when
    unknown, as on a UNIX socket with no proxy header), and whether it
    reached the first proxy, or memmq, over TLS.
    """

    host: str
    secure: bool

    def twisted_address(self) -> IPv4Address | IPv6Address:
        kind = IPv6Address if ":" in self.host else IPv4Address
        return kind("TCP", self.host, 0)


def client_address(request, trusted: TrustedProxies = NO_PROXIES) -> ClientAddress:
    """
    The client of twisted.web C{request}, believing the forwarding headers
    of C{trusted} proxies only.
    """
    peer = request.getClientAddress()
    secure = bool(request.isSecure())
    if isinstance(peer, (IPv4Address, IPv6Address)):
        host = peer.host
        believed = trusted.trusts(host)
    elif isinstance(peer, UNIXAddress):
        host, believed = "-", trusted.unix
    else:
        host, believed = "-", False
    if not believed:
        return ClientAddress(host, secure)
    headers = request.requestHeaders
    hops = [
        hop.strip().decode("latin-1")
        for value in headers.getRawHeaders(_FORWARDED_FOR, [])
        for hop in value.split(b",")
        if hop.strip()
    ]
    for hop in reversed(hops):
        host = hop.strip("[]")
        if not trusted.trusts(host):
            break
    proto = headers.getRawHeaders(_FORWARDED_PROTO)
    if proto:
        # The first proxy's word: it is the one the client talked to.
        secure = proto[0].split(b",")[0].strip().lower() == b"https"
    return ClientAddress(host, secure)
