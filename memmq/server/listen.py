"""
Where a server listens: parsing C{--address} and opening a TLS endpoint.

An empty host means every interface, IPv4 and IPv6 alike (one dual-stack
socket on C{::}), so that C{localhost} reaches the server whichever address
it resolves to; a machine without IPv6 falls back to C{0.0.0.0}.
"""

from __future__ import annotations

import errno
import ipaddress
import socket

from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort

from memmq.errors import MemmqError
from memmq.server.eager import EagerTLSServerEndpoint

__all__ = ["Address", "ListenError", "parse_address", "listen_tls"]


class ListenError(MemmqError):
    """
    The server cannot listen where it was told to (port in use, no such
    address, no permission).
    """


class AddressError(MemmqError, ValueError):
    """
    An C{--address} that is not C{[host]:port}.
    """


class Address:
    """
    A parsed listen address: C{host} may be empty (every interface).
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_address(text: str) -> Address:
    """
    Parse C{host:port}, C{:port} or C{[v6]:port}.
    """
    host, sep, port = text.rpartition(":")
    if not sep:
        raise AddressError(f"address {text!r} is not host:port (for example :8081 or 127.0.0.1:8081)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise AddressError(f"address {text!r}: write an IPv6 host in brackets, as [::1]:8081")
    if not (port.isascii() and port.isdigit()):
        raise AddressError(f"address {text!r}: port {port!r} is not a number")
    number = int(port)
    if not 0 <= number <= 65535:
        raise AddressError(f"address {text!r}: port {number} is out of range")
    return Address(host, number)


def _interface(host: str) -> str:
    """
    The IP address to bind for C{host} (the socket's family follows it).
    """
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise ListenError(f"cannot listen on {host}: {e.strerror}") from None
        return infos[0][4][0]


def _listen_now(endpoint, factory) -> IListeningPort:
    """
    Listen, synchronously: a TCP endpoint's Deferred has fired by now.
    """
    outcome: list = []
    d: Deferred = endpoint.listen(factory)
    d.addBoth(outcome.append)
    if not outcome:  # not a TCP endpoint after all; nothing here makes one
        raise ListenError("listening did not complete synchronously")
    result = outcome[0]
    if hasattr(result, "check"):
        result.raiseException()
    return result


def listen_tls(reactor, address: Address, options, factory) -> IListeningPort:
    """
    Listen on C{address} with TLS C{options}; raise L{ListenError} with a
    one-line reason if that cannot be done.
    """
    attempts = ["::", "0.0.0.0"] if address.host == "" else [_interface(address.host)]
    for i, interface in enumerate(attempts):
        try:
            return _listen_now(EagerTLSServerEndpoint(reactor, address.port, options, interface), factory)
        except CannotListenError as e:
            unsupported = isinstance(e.socketError, OSError) and e.socketError.errno in (
                errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT,
            )
            if unsupported and i + 1 < len(attempts):
                continue
            reason = e.socketError.strerror if isinstance(e.socketError, OSError) else str(e.socketError)
            raise ListenError(f"cannot listen on {address}: {reason}") from None
    raise AssertionError("unreachable")
