"""
Certificates for the server side: load the operator's, or make our own.

Without C{--cert_file}/C{--key_file} the server generates a self-signed
certificate at start, as asim/mq does, so a default server serves TLS out of
the box.  Certificates are built with C{cryptography} and handed to Twisted
through pyOpenSSL contexts; only TLS 1.2 and newer are offered.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable, Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import crypto
from twisted.internet import ssl
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from memmq.errors import MemmqError

__all__ = [
    "ClientTLS", "ServerCertificate", "TLSConfigError", "load_certificate", "load_client_authorities",
    "self_signed_certificate",
]

_DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")


class TLSConfigError(MemmqError):
    """
    A certificate or key that cannot be used; the message says which and why.
    """


class ServerCertificate:
    """
    A private key and the certificate chain that goes with it.

    @ivar origin: how it came to be, for the start-up log line: C{"generated"}
        or C{"loaded from <file>"}.
    @ivar client_authorities: with C{--client_ca_file}, the CA certificates
        a client certificate is verified against: the server then asks for
        one (a client without one is still served, as anonymous or by its
        token); L{None}: it asks for none.
    """

    client_authorities: list[x509.Certificate] | None = None

    def __init__(self, key, chain: Sequence[x509.Certificate], origin: str) -> None:
        self.key = key
        self.chain = list(chain)
        self.origin = origin

    @property
    def certificate(self) -> x509.Certificate:
        return self.chain[0]

    def chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def options(self) -> ssl.CertificateOptions:
        """
        Server-side TLS options: this chain, TLS 1.2 or newer; a client
        certificate asked for (not required) and verified when there are
        L{client_authorities}.
        """
        verify = {}
        if self.client_authorities:
            verify = dict(
                verify=True, requireCertificate=False,
                caCerts=[crypto.X509.from_cryptography(c) for c in self.client_authorities],
            )
        return ssl.CertificateOptions(
            privateKey=crypto.PKey.from_cryptography_key(self.key),
            certificate=crypto.X509.from_cryptography(self.chain[0]),
            extraCertChain=[crypto.X509.from_cryptography(c) for c in self.chain[1:]],
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
            **verify,
        )


def _subject_alternative_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    seen: set[str] = set()
    for host in hosts:
        if not host or host in seen:
            continue
        seen.add(host)
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def self_signed_certificate(host: str = "", days: int = 365, now: datetime.datetime | None = None) -> ServerCertificate:
    """
    Generate an EC P-256 key and a self-signed certificate for it.

    @param host: the host the server listens on; named in the certificate
        beside C{localhost}, C{127.0.0.1} and C{::1}.  Wildcard listen
        addresses (empty, C{0.0.0.0}, C{::}) add nothing.
    """
    if host in ("0.0.0.0", "::"):
        host = ""
    key = ec.generate_private_key(ec.SECP256R1())
    common_name = host or "localhost"
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "memmq"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
    ])
    now = now or datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(_subject_alternative_names((host, *_DEFAULT_HOSTS))), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_encipherment=False, content_commitment=False,
                data_encipherment=False, key_agreement=True, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return ServerCertificate(key, [certificate], "generated")


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSConfigError(f"cannot read {what} {path}: {e.strerror or e}") from None


def load_client_authorities(ca_file: str) -> list[x509.Certificate]:
    """
    The CA certificates in C{ca_file} (C{--client_ca_file}).

    @raise TLSConfigError: unreadable, or no PEM certificate in it.
    """
    pem = _read(ca_file, "client CA file")
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise TLSConfigError(f"no PEM certificate in client CA file {ca_file}") from None


def load_certificate(cert_file: str, key_file: str) -> ServerCertificate:
    """
    Load a PEM certificate chain and its private key, used as they are.

    @raise TLSConfigError: a file is missing or unreadable, holds no PEM
        certificate or key, or the key does not belong to the first
        certificate of the chain.
    """
    chain_pem = _read(cert_file, "certificate file")
    key_pem = _read(key_file, "key file")
    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
    except ValueError:
        raise TLSConfigError(f"no PEM certificate in {cert_file}") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise TLSConfigError(f"key file {key_file} is encrypted; give an unencrypted key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise TLSConfigError(f"no usable PEM private key in {key_file}") from None
    if chain[0].public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise TLSConfigError(f"key in {key_file} does not match the certificate in {cert_file}")
    return ServerCertificate(key, chain, f"loaded from {cert_file}")


@implementer(IPolicyForHTTPS)
class ClientTLS:
    """
    TLS for the client side (the client library, the CLI, a proxy's
    upstreams).

    Without a CA file, certificates are not verified, as asim/mq does, so
    that a server with its generated certificate works out of the box.
    Given a CA file (PEM, one or more certificates), the server's
    certificate must chain to one of them and name the host connected to
    (checked by service_identity).
    """

    def __init__(self, ca_file: str | None = None, client_cert: str | tuple[str, str] | None = None) -> None:
        self._unverified = None
        self._root = None
        #: The CA file's PEM bytes, or L{None} when not verifying.
        self.ca_pem: bytes | None = None
        #: The client certificate chain and key presented to servers (PEM),
        #: or L{None}: from C{client_cert}, one PEM file holding both or a
        #: (certificate file, key file) pair.
        self.client_pem: tuple[bytes, bytes] | None = None
        self._client = None
        if client_cert is not None:
            cert_file, key_file = (client_cert, client_cert) if isinstance(client_cert, str) else client_cert
            loaded = load_certificate(cert_file, key_file)
            self.client_pem = (loaded.chain_pem(), loaded.key_pem())
            self._client = ssl.PrivateCertificate.loadPEM(self.client_pem[1] + self.client_pem[0])
        if ca_file is not None:
            pem = self.ca_pem = _read(ca_file, "CA file")
            try:
                authorities = x509.load_pem_x509_certificates(pem)
            except ValueError:
                raise TLSConfigError(f"no PEM certificate in CA file {ca_file}") from None
            self._root = ssl.trustRootFromCertificates(
                [ssl.Certificate(crypto.X509.from_cryptography(c)) for c in authorities]
            )

    def creator(self, host: str):
        """
        The TLS connection creator for a connection to C{host}.
        """
        if self._root is None:
            if self._unverified is None:
                mine = {}
                if self._client is not None:
                    mine = dict(privateKey=self._client.privateKey.original, certificate=self._client.original)
                self._unverified = ssl.CertificateOptions(
                    verify=False, raiseMinimumTo=ssl.TLSVersion.TLSv1_2, **mine
                )
            return self._unverified
        return ssl.optionsForClientTLS(host, trustRoot=self._root, clientCertificate=self._client)

    def creatorForNetloc(self, hostname: bytes, port: int):
        return self.creator(hostname.decode("ascii"))
