"""
Certificate pinning for the gRPC transport: the certificate chain a server
presents, fetched unverified over one TLS handshake, and the name to check
it against when the host that reached it is not one of its names.

The HTTP/WebSocket client trusts a server's certificate the same way
(README: TLS); gRPC's channel needs the certificate and a target name
handed to it before it connects, hence this separate step.
"""

from __future__ import annotations

import ipaddress

from cryptography import x509
from twisted.internet import endpoints, ssl
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from memmq.client.transport import CONNECT_TIMEOUT

__all__ = ["fetch_certificate", "name_override"]


@implementer(IHandshakeListener)
class _Peek(Protocol):
    """
    Completes a TLS handshake, takes the certificates shown, and hangs up.
    """

    def handshakeCompleted(self) -> None:
        chain = self.transport.getHandle().get_peer_cert_chain(as_cryptography=True) or []
        if not self.factory.chain.called:
            self.factory.chain.callback(list(chain))
        self.transport.loseConnection()

    def connectionLost(self, reason) -> None:
        if not self.factory.chain.called:
            self.factory.chain.errback(reason)


def fetch_certificate(reactor, host: str, port: int, timeout: float = CONNECT_TIMEOUT) -> Deferred:
    """
    The certificate chain (C{cryptography} certificates) that C{host:port}
    presents, unverified.
    """
    connected: list[Protocol] = []

    def cancel(_: Deferred) -> None:
        connecting.cancel()
        for protocol in connected:
            if protocol.transport is not None:
                protocol.transport.abortConnection()

    factory = Factory.forProtocol(_Peek)
    factory.chain = Deferred(cancel)
    endpoint = endpoints.wrapClientTLS(
        ssl.CertificateOptions(verify=False, raiseMinimumTo=ssl.TLSVersion.TLSv1_2),
        endpoints.HostnameEndpoint(reactor, host, port, timeout=timeout),
    )
    connecting = endpoint.connect(factory)
    connecting.addCallbacks(connected.append, lambda f: factory.chain.called or factory.chain.errback(f))
    return factory.chain.addTimeout(timeout, reactor)


def _names(certificate: x509.Certificate) -> list[str]:
    try:
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans = None
    names = [str(n) for n in sans.get_values_for_type(x509.DNSName)] if sans else []
    names += [str(n) for n in sans.get_values_for_type(x509.IPAddress)] if sans else []
    names += [a.value for a in certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    return names


def name_override(certificate: x509.Certificate, host: str) -> str | None:
    """
    The name to check C{certificate} against when C{host} is not one of its
    names (a pinned certificate is trusted whatever host reached it).
    """
    names = _names(certificate)
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if host in names or not names:
        return None
    for name in names:
        if ":" not in name or _is_ip(name):
            return name
    # gRPC reads the name as host[:port] and checks the host part only; a
    # name that holds a colon itself (asim/mq's generated certificate
    # names "127.0.0.1:PORT", host and port) is taken whole in brackets.
    return f"[{names[0]}]"


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
