"""
Where a server listens: parsing C{--address} and C{--listen}, and opening
TLS endpoints on them.

An empty C{--address} host means every interface, IPv4 and IPv6 alike (one
dual-stack socket on C{::}), so that C{localhost} reaches the server
whichever address it resolves to; a machine without IPv6 falls back to
C{0.0.0.0}.

C{--listen} takes any Twisted server endpoint description (C{tcp:8081},
C{unix:/run/memmq/memmq.sock}, C{systemd:domain=INET6:name=memmq}, ...);
memmq adds TLS over it, as it does over C{--address} -- unless the
description starts with C{plain:} (L{PLAIN}), for a server behind a proxy
that terminates TLS itself (README, "Behind a proxy").
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import socket

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger

from memmq.eager import EagerTLSServerEndpoint
from memmq.errors import MemmqError
from memmq.server.plain_http import GuardedTLSServerEndpoint
from memmq.server.system_limits import system_backlog, with_backlog

__all__ = [
    "announce_listening",
    "Address", "EndpointError", "ListenError", "parse_address", "parse_endpoint", "listen_tls", "listen_endpoint",
    "describe_port", "is_plain", "PLAIN", "bind",
]

# The prefix of a --listen description served without TLS.
PLAIN = "plain:"


class ListenError(MemmqError):
    """
    The server cannot listen where it was told to (port in use, no such
    address, no permission).
    """


class AddressError(MemmqError, ValueError):
    """
    An C{--address} that is not C{[host]:port}.
    """


class EndpointError(MemmqError, ValueError):
    """
    A C{--listen} that is not a server endpoint description memmq can use.
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
    Listen, synchronously: the Deferred of a TCP, UNIX or adopted (systemd)
    endpoint has fired by now.
    """
    outcome: list = []
    d: Deferred = endpoint.listen(factory)
    d.addBoth(outcome.append)
    if not outcome:
        # An endpoint from a plugin that listens later: the service must
        # know at start whether it listens (twistd sheds privileges next).
        d.cancel()
        raise ListenError("listening did not complete at once")
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
            return _listen_now(
                EagerTLSServerEndpoint(reactor, address.port, options, interface, system_backlog()), factory
            )
        except CannotListenError as e:
            unsupported = isinstance(e.socketError, OSError) and e.socketError.errno in (
                errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT,
            )
            if unsupported and i + 1 < len(attempts):
                continue
            reason = e.socketError.strerror if isinstance(e.socketError, OSError) else str(e.socketError)
            raise ListenError(f"cannot listen on {address}: {reason}") from None
    raise AssertionError("unreachable")


def bind(address: Address, reuse_port: bool = False) -> socket.socket:
    """
    A TCP socket bound to C{address} as L{listen_tls} would bind it (every
    interface, IPv4 and IPv6, for an empty host), not yet listening: for a
    parent process (C{--workers}) to pass to its workers and to start
    listening on once they all serve.  Raise L{ListenError} with a
    one-line reason if that cannot be done.

    @param reuse_port: bind with C{SO_REUSEPORT}, never to listen here:
        to hold a port that the workers' gRPC servers bind too.
    """
    attempts = ["::", "0.0.0.0"] if address.host == "" else [_interface(address.host)]
    for i, interface in enumerate(attempts):
        family = socket.AF_INET6 if ":" in interface else socket.AF_INET
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as e:
            if i + 1 < len(attempts):
                continue
            raise ListenError(f"cannot listen on {address}: {e.strerror}") from None
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((interface, address.port))
        except OSError as e:
            sock.close()
            unsupported = e.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT)
            if unsupported and i + 1 < len(attempts):
                continue
            raise ListenError(f"cannot listen on {address}: {e.strerror}") from None
        sock.setblocking(False)
        return sock
    raise AssertionError("unreachable")


# Endpoint types that bring their own TLS: memmq's would go inside theirs.
_TLS_TYPES = ("ssl", "txsni", "le", "lets")

# "_parseTCP() missing 1 required positional argument: 'port'": the
# function's name means nothing to the user.
_CALLABLE = re.compile(r"^[\w.]+\(\) ")


def parse_endpoint(reactor, description: str) -> IStreamServerEndpoint:
    """
    The (plain, TLS not yet added) server endpoint of a C{--listen}
    description, without listening.

    @raise EndpointError: the description is not one memmq can use.
    @raise ListenError: a C{systemd:} description names a socket that
        systemd did not pass (Twisted looks inherited sockets up here).
    """
    if is_plain(description):
        description = description[len(PLAIN):]
    kind = description.split(":", 1)[0].strip().lower()
    if kind in _TLS_TYPES:
        raise EndpointError(
            f"--listen={description}: memmq adds TLS itself (with --cert_file/--key_file); "
            "use a plain endpoint such as tcp:8081"
        )
    try:
        return serverFromString(reactor, description)
    except (IndexError, KeyError) as e:
        if kind == "systemd":
            raise ListenError(f"cannot listen on {description}: {_no_systemd_socket(e)}") from None
        raise EndpointError(f"--listen={description}: {_reason(e)}") from None
    except (ValueError, TypeError, AttributeError, OSError) as e:
        raise EndpointError(f"--listen={description}: {_reason(e)}") from None


def is_plain(description: str) -> bool:
    """
    Whether a C{--listen} description asks for plain HTTP (C{plain:tcp:8080}).
    """
    return description[: len(PLAIN)].lower() == PLAIN


def _reason(error: Exception) -> str:
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    return _CALLABLE.sub("", str(error)) or type(error).__name__


def _no_systemd_socket(error: Exception) -> str:
    names = os.environ.get("LISTEN_FDNAMES")
    passed = os.environ.get("LISTEN_FDS")
    if passed is None or os.environ.get("LISTEN_PID") != str(os.getpid()):
        return "no sockets passed by systemd (run it from a .socket unit, or use tcp:PORT)"
    if isinstance(error, KeyError):
        return f"systemd passed no socket named {error.args[0]!r} (LISTEN_FDNAMES={names or ''})"
    if names is None:
        return f"systemd passed {passed} socket(s) without names (LISTEN_FDNAMES): systemd 227 or newer needed"
    return f"systemd passed {passed} socket(s), not that many"


def listen_endpoint(reactor, description: str, options, factory) -> IListeningPort:
    """
    Listen on the endpoint C{description} with TLS C{options} (without TLS
    for a C{plain:} description); raise L{ListenError} with a one-line
    reason if that cannot be done (or L{EndpointError} for a description
    that was not validated before).
    """
    endpoint = parse_endpoint(reactor, with_backlog(description))
    if not is_plain(description):
        endpoint = GuardedTLSServerEndpoint(endpoint, options, reactor)
    try:
        return _listen_now(endpoint, factory)
    except CannotListenError as e:
        reason = e.socketError.strerror if isinstance(e.socketError, OSError) else str(e.socketError)
        raise ListenError(f"cannot listen on {description}: {reason}") from None
    except ListenError as e:
        raise ListenError(f"cannot listen on {description}: {e}") from None
    except OSError as e:
        raise ListenError(f"cannot listen on {description}: {_reason(e)}") from None


def describe_port(port: IListeningPort, description: str | None = None) -> tuple[str, str]:
    """
    How the start-up line names where C{port} listens: C{("https://",
    "HOST:PORT")} for TCP (C{"http://"} for a C{plain:} description),
    C{("", "unix:PATH")} for a UNIX socket, else C{("", description)}.
    """
    host = port.getHost()
    if isinstance(host, (IPv4Address, IPv6Address)):
        shown = f"[{host.host}]" if ":" in host.host else host.host
        scheme = "http://" if description is not None and is_plain(description) else "https://"
        return scheme, f"{shown}:{host.port}"
    if isinstance(host, UNIXAddress) and host.name:
        name = host.name.decode("utf-8", "replace") if isinstance(host.name, bytes) else host.name
        return "", f"unix:{name}"
    return "", description or str(host)


def announce_listening(
    log: Logger, port: IListeningPort, description: str | None, origin: str, role: str = "",
) -> None:
    """
    The start-up line saying where C{port} listens, on C{log} (the
    caller's namespace, which people filter on): loud for plain HTTP,
    which anyone on the path reads unless a proxy in front terminates TLS
    (README, "Behind a proxy").
    """
    scheme, address = describe_port(port, description)
    if description is not None and is_plain(description):
        log.warn(
            "memmq listening on {scheme}{address} WITHOUT TLS (plain HTTP: put a proxy that "
            "terminates TLS in front of it){role}",
            scheme=scheme, address=address, endpoint=description, role=role,
        )
    else:
        log.info(
            "memmq listening on {scheme}{address} (certificate {origin}){role}",
            scheme=scheme, address=address, origin=origin, endpoint=description, role=role,
        )
