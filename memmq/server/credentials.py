# -*- test-case-name: tests.test_access -*-
"""
Where a client's credentials are (README: Access control): a bearer token
in C{Authorization: Bearer}, C{?token=} or the C{memmq.token.TOKEN}
WebSocket subprotocol, else its TLS client certificate's names; read from
a request, a handshake or gRPC metadata, and kept out of the logs.  Who
they name, and what that one may do, is L{memmq.server.access}'s to ask.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from cryptography import x509

__all__ = [
    "BEARER_SUBPROTOCOL", "IN_HEADER", "IN_QUERY", "IN_SUBPROTOCOL", "NO_CREDENTIALS", "TOKEN_SUBPROTOCOL",
    "bearer_token", "certificate_names", "peer_certificate", "presented", "presented_token", "redact_tokens",
    "select_subprotocol", "subprotocol_token",
]

#: A browser, which cannot set headers on a WebSocket, offers its token as
#: this subprotocol plus the token ...
TOKEN_SUBPROTOCOL = "memmq.token."
#: ... and this one, which the server selects (a browser fails a handshake
#: whose answer selects none of those offered), so the token is never sent
#: back.
BEARER_SUBPROTOCOL = "memmq.bearer"

_REDACT = re.compile(r"(?i)((?:^|[?&;\s])token=)[^&\s\"]*")


def redact_tokens(text: str) -> str:
    """
    C{text} (an access-log line, a URL) with the value of every C{token=}
    replaced by C{REDACTED}.
    """
    return _REDACT.sub(r"\1REDACTED", text)


def bearer_token(authorization: str | bytes | None) -> str | None:
    """
    The token of an C{Authorization: Bearer TOKEN} header value, or L{None}.
    """
    if not authorization:
        return None
    if isinstance(authorization, bytes):
        authorization = authorization.decode("latin-1")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def subprotocol_token(protocols: Iterable[str]) -> str | None:
    """
    The token offered as the C{memmq.token.TOKEN} subprotocol, or L{None}.
    """
    for protocol in protocols:
        if protocol.startswith(TOKEN_SUBPROTOCOL):
            return protocol[len(TOKEN_SUBPROTOCOL):] or None
    return None


def certificate_names(certificate) -> list[str]:
    """
    A client certificate's names, as the auth file's C{certificate} keys
    are compared with them: its common names, then its SANs (DNS names, IP
    addresses, e-mail addresses, URIs).  C{certificate} is pyOpenSSL's or
    C{cryptography}'s.
    """
    if hasattr(certificate, "to_cryptography"):
        certificate = certificate.to_cryptography()
    names = [str(a.value) for a in certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    try:
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return names
    for kind in (x509.DNSName, x509.IPAddress, x509.RFC822Name, x509.UniformResourceIdentifier):
        names += [str(v) for v in sans.get_values_for_type(kind)]
    return names


def select_subprotocol(offered: Sequence[str], chosen: str | None = None) -> str | None:
    """
    The subprotocol a handshake answers with: C{chosen} if the handler
    chose one; else L{BEARER_SUBPROTOCOL} when the client offered its token
    as a subprotocol and offered that too (a browser needs one selected).
    """
    if chosen is not None:
        return chosen
    if BEARER_SUBPROTOCOL in offered and subprotocol_token(offered) is not None:
        return BEARER_SUBPROTOCOL
    return None


# Where a request's credentials are: what presented returns.
NO_CREDENTIALS, IN_HEADER, IN_QUERY, IN_SUBPROTOCOL = range(4)


def presented(request) -> tuple[int, bytes | None]:
    """
    Where C{request}'s credentials are, and their bytes as sent: the
    C{Authorization} header, else C{?token=}, else the WebSocket
    subprotocols offered; else none (a client certificate, or anonymous).
    """
    headers = request.requestHeaders
    values = headers.getRawHeaders(b"authorization")
    if values:
        return IN_HEADER, values[0]
    values = request.args.get(b"token")
    if values:
        return IN_QUERY, values[0]
    values = headers.getRawHeaders(b"sec-websocket-protocol")
    if values and TOKEN_SUBPROTOCOL.encode() in values[0]:
        return IN_SUBPROTOCOL, b",".join(values)
    return NO_CREDENTIALS, None


def presented_token(kind: int, raw: bytes | None) -> str | None:
    """
    The token of credentials L{presented} found as C{kind}, C{raw}; L{None}
    where there is none (a client certificate, or anonymous).
    """
    if kind == IN_HEADER:
        return bearer_token(raw)
    if kind == IN_QUERY:
        return raw.decode("utf-8", "surrogateescape") or None
    if kind == IN_SUBPROTOCOL:
        return subprotocol_token(p.strip() for p in raw.decode("latin-1").split(","))
    return None


def peer_certificate(channel):
    """
    The TLS client certificate of C{channel}'s connection, or L{None}.
    """
    transport = getattr(channel, "transport", None)
    get = getattr(transport, "getPeerCertificate", None)
    if get is None:
        return None
    try:
        return get()
    except Exception:
        return None
