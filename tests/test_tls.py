"""
Tests for memmq.tls: the generated self-signed certificate, loading an
operator's chain and key, and the one-line errors when that cannot be done.
"""

from __future__ import annotations

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from twisted.internet import ssl
from twisted.trial.unittest import SynchronousTestCase

from memmq.errors import MemmqError
from memmq.tls import (
    ServerCertificate,
    TLSConfigError,
    load_certificate,
    self_signed_certificate,
)

_DEFAULT_NAMES = {"localhost", ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}


def _names(certificate: x509.Certificate) -> set:
    """
    The subject alternative names of C{certificate}: DNS names as L{str},
    IP addresses as L{ipaddress} objects.
    """
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.DNSName)) | set(san.get_values_for_type(x509.IPAddress))


def _context_options(certificate: ServerCertificate) -> int:
    """
    The option flags of the OpenSSL context that C{certificate} serves with.
    """
    context = certificate.options().getContext()
    # set_options(0) adds nothing and returns the flags now set.
    return context.set_options(0)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """
    A tiny CA: a key and its self-signed CA certificate.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name("memmq test CA"))
        .issuer_name(_name("memmq test CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def _leaf(ca_key, ca: x509.Certificate, host: str = "server.test"):
    """
    A key and a server certificate for C{host} signed by C{ca}.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(host))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    return key, certificate


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _key_pem(key, password: bytes | None = None) -> bytes:
    encryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


class SelfSignedTests(SynchronousTestCase):
    """
    Without --cert_file/--key_file the server makes its own certificate:
    EC P-256, one year, for the listen host and the loopback names.
    """

    def test_key(self) -> None:
        """
        The key is EC P-256 and belongs to the certificate, which is signed
        by it.
        """
        certificate = self_signed_certificate()
        self.assertIsInstance(certificate.key, ec.EllipticCurvePrivateKey)
        self.assertIsInstance(certificate.key.curve, ec.SECP256R1)
        self.assertEqual(
            certificate.certificate.public_key().public_numbers(),
            certificate.key.public_key().public_numbers(),
        )
        self.assertEqual(certificate.certificate.issuer, certificate.certificate.subject)
        self.assertEqual(len(certificate.chain), 1)

    def test_default_names(self) -> None:
        """
        The certificate names localhost as a DNS name and 127.0.0.1 and ::1
        as IP addresses, and nothing else without a host.
        """
        self.assertEqual(_names(self_signed_certificate().certificate), _DEFAULT_NAMES)

    def test_wildcard_hosts_add_nothing(self) -> None:
        """
        Listening on every interface ("", 0.0.0.0, ::) adds no name.
        """
        for host in ("", "0.0.0.0", "::"):
            with self.subTest(host=host):
                self.assertEqual(_names(self_signed_certificate(host).certificate), _DEFAULT_NAMES)

    def test_dns_host(self) -> None:
        """
        A host name listened on is added as a DNS name.
        """
        certificate = self_signed_certificate("mq.example.org").certificate
        self.assertEqual(_names(certificate), _DEFAULT_NAMES | {"mq.example.org"})
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertIn("mq.example.org", san.get_values_for_type(x509.DNSName))

    def test_ip_hosts(self) -> None:
        """
        An IPv4 or IPv6 host listened on is added as an IP address, not a
        DNS name; a loopback one is not named twice.
        """
        for host in ("192.0.2.7", "2001:db8::7"):
            with self.subTest(host=host):
                certificate = self_signed_certificate(host).certificate
                self.assertEqual(_names(certificate), _DEFAULT_NAMES | {ipaddress.ip_address(host)})
                san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                self.assertNotIn(host, san.get_values_for_type(x509.DNSName))
        san = self_signed_certificate("127.0.0.1").certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value
        self.assertEqual(len(list(san)), 3)

    def test_validity(self) -> None:
        """
        The certificate is valid from about now for one year.
        """
        now = datetime.datetime(2030, 6, 1, tzinfo=datetime.UTC)
        certificate = self_signed_certificate(now=now).certificate
        before, after = certificate.not_valid_before_utc, certificate.not_valid_after_utc
        self.assertLessEqual(before, now)
        self.assertLess(now - before, datetime.timedelta(hours=1))
        self.assertEqual(after, now + datetime.timedelta(days=365))

    def test_validity_from_now(self) -> None:
        """
        By default the certificate is valid now, for about a year.
        """
        now = datetime.datetime.now(datetime.UTC)
        certificate = self_signed_certificate().certificate
        self.assertLessEqual(certificate.not_valid_before_utc, now)
        lifetime = certificate.not_valid_after_utc - now
        self.assertGreater(lifetime, datetime.timedelta(days=364))
        self.assertLessEqual(lifetime, datetime.timedelta(days=366))

    def test_server_auth(self) -> None:
        """
        The certificate is for server authentication and is not a CA.
        """
        extensions = self_signed_certificate().certificate.extensions
        usage = extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        self.assertIn(ExtendedKeyUsageOID.SERVER_AUTH, list(usage))
        self.assertFalse(extensions.get_extension_for_class(x509.BasicConstraints).value.ca)

    def test_origin(self) -> None:
        """
        A generated certificate says so in its origin.
        """
        self.assertEqual(self_signed_certificate().origin, "generated")

    def test_pem_round_trip(self) -> None:
        """
        The PEM forms of the chain and key load back as the same
        certificate and a key that matches it.
        """
        certificate = self_signed_certificate("mq.example.org")
        chain = x509.load_pem_x509_certificates(certificate.chain_pem())
        self.assertEqual(chain, certificate.chain)
        key = serialization.load_pem_private_key(certificate.key_pem(), password=None)
        self.assertEqual(key.public_key().public_numbers(), certificate.key.public_key().public_numbers())


class OptionsTests(SynchronousTestCase):
    """
    The TLS options a server gets from its certificate: this chain, TLS 1.2
    or newer.
    """

    def test_context(self) -> None:
        """
        C{options} returns L{ssl.CertificateOptions} whose context builds.
        """
        options = self_signed_certificate("127.0.0.1").options()
        self.assertIsInstance(options, ssl.CertificateOptions)
        self.assertIsInstance(options.getContext(), SSL.Context)

    def test_no_tls_before_1_2(self) -> None:
        """
        The context refuses TLS 1.0 and 1.1 and keeps TLS 1.2 and 1.3.
        """
        flags = _context_options(self_signed_certificate())
        self.assertTrue(flags & SSL.OP_NO_TLSv1)
        self.assertTrue(flags & SSL.OP_NO_TLSv1_1)
        self.assertFalse(flags & SSL.OP_NO_TLSv1_2)
        self.assertFalse(flags & getattr(SSL, "OP_NO_TLSv1_3", 0))

    def test_loaded_chain_context(self) -> None:
        """
        A loaded chain with an intermediate builds a context with the same
        version floor.
        """
        ca_key, ca = _ca()
        key, leaf = _leaf(ca_key, ca)
        flags = _context_options(ServerCertificate(key, [leaf, ca], "test"))
        self.assertTrue(flags & SSL.OP_NO_TLSv1)
        self.assertTrue(flags & SSL.OP_NO_TLSv1_1)


class LoadTests(SynchronousTestCase):
    """
    --cert_file/--key_file are loaded as they are, or refused with one line
    naming the file.
    """

    def setUp(self) -> None:
        self.base = self.mktemp()
        os.makedirs(self.base)
        self.ca_key, self.ca = _ca()
        self.key, self.leaf = _leaf(self.ca_key, self.ca)

    def _write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.base, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def _refused(self, cert_file: str, key_file: str) -> str:
        """
        Assert that loading fails with L{TLSConfigError}; return its
        one-line message.
        """
        error = self.assertRaises(TLSConfigError, load_certificate, cert_file, key_file)
        self.assertIsInstance(error, MemmqError)
        message = str(error)
        self.assertTrue(message)
        self.assertNotIn("\n", message)
        return message

    def test_chain_round_trip(self) -> None:
        """
        A chain file holding the leaf then its CA loads as a two-certificate
        chain, in that order, with the matching key; the origin names the
        file.
        """
        cert_file = self._write("chain.pem", _pem(self.leaf) + _pem(self.ca))
        key_file = self._write("key.pem", _key_pem(self.key))
        loaded = load_certificate(cert_file, key_file)
        self.assertEqual(loaded.chain, [self.leaf, self.ca])
        self.assertEqual(loaded.certificate, self.leaf)
        self.assertEqual(len(loaded.chain), 2)
        self.assertEqual(
            loaded.key.public_key().public_numbers(), self.key.public_key().public_numbers()
        )
        self.assertIn(cert_file, loaded.origin)
        self.assertEqual(loaded.origin, f"loaded from {cert_file}")
        self.assertEqual(loaded.chain_pem(), _pem(self.leaf) + _pem(self.ca))
        self.assertIsInstance(loaded.options().getContext(), SSL.Context)

    def test_traditional_key_format(self) -> None:
        """
        A key in the traditional (SEC1 "EC PRIVATE KEY") PEM form loads too.
        """
        cert_file = self._write("cert.pem", _pem(self.leaf))
        key_file = self._write(
            "key.pem",
            self.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            ),
        )
        self.assertEqual(load_certificate(cert_file, key_file).chain, [self.leaf])

    def test_missing_cert_file(self) -> None:
        """
        A certificate file that does not exist is named in the error.
        """
        cert_file = os.path.join(self.base, "absent.pem")
        key_file = self._write("key.pem", _key_pem(self.key))
        message = self._refused(cert_file, key_file)
        self.assertIn(cert_file, message)
        self.assertIn("certificate file", message)

    def test_missing_key_file(self) -> None:
        """
        A key file that does not exist is named in the error.
        """
        cert_file = self._write("cert.pem", _pem(self.leaf))
        key_file = os.path.join(self.base, "absent-key.pem")
        message = self._refused(cert_file, key_file)
        self.assertIn(key_file, message)
        self.assertIn("key file", message)

    def test_cert_file_without_pem(self) -> None:
        """
        A certificate file holding no PEM certificate is named in the error.
        """
        cert_file = self._write("cert.pem", b"this is not a certificate\n")
        key_file = self._write("key.pem", _key_pem(self.key))
        self.assertIn(cert_file, self._refused(cert_file, key_file))

    def test_cert_file_holding_a_key(self) -> None:
        """
        A certificate file holding only a key (PEM, but no certificate) is
        refused, naming the file.
        """
        cert_file = self._write("cert.pem", _key_pem(self.key))
        key_file = self._write("key.pem", _key_pem(self.key))
        self.assertIn(cert_file, self._refused(cert_file, key_file))

    def test_key_file_without_pem(self) -> None:
        """
        A key file holding no PEM key is named in the error.
        """
        cert_file = self._write("cert.pem", _pem(self.leaf))
        key_file = self._write("key.pem", b"garbage\n")
        self.assertIn(key_file, self._refused(cert_file, key_file))

    def test_key_does_not_match(self) -> None:
        """
        A key that is not the certificate's is refused, naming both files.
        """
        cert_file = self._write("cert.pem", _pem(self.leaf) + _pem(self.ca))
        other = ec.generate_private_key(ec.SECP256R1())
        key_file = self._write("other-key.pem", _key_pem(other))
        message = self._refused(cert_file, key_file)
        self.assertIn(key_file, message)
        self.assertIn(cert_file, message)

    def test_key_of_the_ca_does_not_match(self) -> None:
        """
        The key of a later certificate of the chain is not the leaf's key.
        """
        cert_file = self._write("cert.pem", _pem(self.leaf) + _pem(self.ca))
        key_file = self._write("ca-key.pem", _key_pem(self.ca_key))
        self.assertIn(key_file, self._refused(cert_file, key_file))

    def test_encrypted_key(self) -> None:
        """
        An encrypted key is refused, naming the file and saying why.
        """
        cert_file = self._write("cert.pem", _pem(self.leaf))
        key_file = self._write("key.pem", _key_pem(self.key, password=b"secret"))
        message = self._refused(cert_file, key_file)
        self.assertIn(key_file, message)
        self.assertIn("encrypted", message)
