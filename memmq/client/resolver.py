"""
How a client turns the server names it was given into the servers it
connects to: as given (L{IP}) or looked up in DNS (L{DNS}).

The Go client's C{client/resolver}, in Python and Deferred-based.  A name is
C{host}, C{host:port}, C{[v6]:port} or an http(s) URL; what comes back is the
same form with each address in place of the host, which is what the client
and the selectors take.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from twisted.internet import defer, interfaces
from twisted.internet.defer import CancelledError, Deferred, DeferredList, fail, succeed
from twisted.logger import Logger
from twisted.names import dns, error
from twisted.names.client import createResolver
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from memmq.client.reasons import reason_of
from memmq.defaults import PORT as DEFAULT_PORT
from memmq.errors import MemmqError

__all__ = ["IResolver", "IP", "DNS", "ResolveError", "DEFAULT_PORT"]


_log = Logger()

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# What a failed lookup means, most specific first, for a one-line error
# (twisted.names' own exceptions print the whole DNS message).
_REASONS: list[tuple[type[BaseException], str]] = [
    (error.DomainError, "no such host"),
    (defer.TimeoutError, "DNS lookup timed out"),
    (error.DNSServerError, "DNS server failure"),
    (error.DNSQueryRefusedError, "DNS query refused"),
    (error.DNSFormatError, "DNS server could not read the query"),
    (error.DNSNotImplementedError, "DNS server does not support the query"),
    (error.DNSUnknownError, "unknown DNS error"),
]


class ResolveError(MemmqError):
    """
    A server name that could not be turned into any server.
    """


class IResolver(Interface):
    """
    Turns one server name into the servers it stands for.
    """

    def resolve(name):
        """
        Look C{name} up.

        @return: a L{Deferred} firing with a non-empty C{list} of servers
            (C{str} each), or failing with L{ResolveError}.
        """


@implementer(IResolver)
class IP:
    """
    The name is the server: no lookup, as the Go client's default.
    """

    def resolve(self, name: str) -> Deferred[list[str]]:
        return succeed([name])


class _Target:
    """
    A server name taken apart: the host to look up, and the rest to put
    around each address found.
    """

    __slots__ = ("scheme", "userinfo", "host", "port", "rest", "address")

    def __init__(self, name: str, default_port: int) -> None:
        self.address: _Address | None
        try:
            # A bare IPv6 address ("::1") is not host:port; take it whole.
            self.address = ipaddress.ip_address(name)
        except ValueError:
            pass
        else:
            self.scheme = self.userinfo = self.rest = ""
            self.host, self.port = name, default_port
            return
        try:
            parts = urlsplit(name if "://" in name else "//" + name)
            port = parts.port
        except ValueError:
            raise ValueError("not host:port or an http(s) URL") from None
        if parts.scheme not in ("", "http", "https"):
            raise ValueError(f"scheme {parts.scheme} is not http or https")
        if not parts.hostname:
            raise ValueError("no host")
        self.scheme = parts.scheme
        self.userinfo = parts.netloc.rpartition("@")[0]
        self.host = parts.hostname
        # As the client does: a server without a port is on memmq's port.
        self.port = default_port if port is None else port
        self.rest = urlunsplit(("", "", parts.path, parts.query, parts.fragment))
        try:
            self.address = ipaddress.ip_address(self.host)
        except ValueError:
            self.address = None

    def server(self, address: _Address) -> str:
        """
        This name with C{address} for its host.
        """
        host = f"[{address}]" if address.version == 6 else str(address)
        netloc = f"{host}:{self.port}"
        if self.userinfo:
            netloc = f"{self.userinfo}@{netloc}"
        return f"{self.scheme}://{netloc}{self.rest}" if self.scheme else netloc + self.rest


def _reason(failures: Sequence[Failure]) -> str:
    """
    One line saying why the lookups found nothing; a failure other than
    "no such host" says more, so it wins.
    """
    reasons = [reason_of(failure, _REASONS) for failure in failures]
    for reason in reasons:
        if reason != "no such host":
            return reason
    return reasons[0] if reasons else "no address records"


@implementer(IResolver)
class DNS:
    """
    Looks each name up in DNS, A and AAAA records at once, and gives every
    address found as a server: the IPv4 ones then the IPv6 ones, each sorted
    numerically.

    Sorted because DNS servers rotate their answers, and L{Shard
    <memmq.client.selector.Shard>} picks a server by its position: the same
    addresses must come back in the same order for a topic to stay put.

    @param resolver: the L{twisted.internet.interfaces.IResolver} to ask;
        by default the system's (C{resolv.conf} and the hosts file), made on
        first use so that constructing this touches neither the network nor
        the reactor.
    @param default_port: the port of a name given without one.
    """

    def __init__(
        self,
        resolver: interfaces.IResolver | None = None,
        default_port: int = DEFAULT_PORT,
    ) -> None:
        self._resolver = resolver
        self.default_port = default_port

    @property
    def resolver(self) -> interfaces.IResolver:
        """
        The DNS resolver asked, made now if it was not given.
        """
        if self._resolver is None:
            # Uses the global reactor: createResolver takes no other.
            self._resolver = createResolver()
        return self._resolver

    def resolve(self, name: str) -> Deferred[list[str]]:
        try:
            target = _Target(name.strip(), self.default_port)
        except ValueError as e:
            return fail(ResolveError(f"cannot resolve {name}: {e}"))
        if target.address is not None:
            return succeed([target.server(target.address)])

        resolver = self.resolver
        lookups = [resolver.lookupAddress(target.host), resolver.lookupIPV6Address(target.host)]

        def cancel(result: Deferred[list[str]]) -> None:
            for lookup in lookups:
                lookup.cancel()

        result: Deferred[list[str]] = Deferred(cancel)
        DeferredList(lookups, consumeErrors=True).addCallback(self._found, name, target).chainDeferred(result)
        return result

    def _found(self, results: list[tuple[bool, Any]], name: str, target: _Target) -> list[str] | Failure:
        v4: set[ipaddress.IPv4Address] = set()
        v6: set[ipaddress.IPv6Address] = set()
        failures = []
        for succeeded, value in results:
            if not succeeded:
                if value.check(CancelledError):
                    return value
                failures.append(value)
                continue
            answers, _authority, _additional = value
            # The answers hold the CNAME chain too, and whoever the A and
            # AAAA records at its end are named for, they are this name's.
            for record in answers:
                if record.type == dns.A:
                    v4.add(ipaddress.IPv4Address(record.payload.address))
                elif record.type == dns.AAAA:
                    v6.add(ipaddress.IPv6Address(record.payload.address))
        addresses: list[_Address] = [*sorted(v4), *sorted(v6)]
        if not addresses:
            raise ResolveError(f"cannot resolve {name}: {_reason(failures)}")
        if failures:
            _log.debug("{name}: one lookup failed, using the other: {reason}", name=name, reason=_reason(failures))
        return [target.server(address) for address in addresses]
