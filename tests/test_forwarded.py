"""
--trusted_proxies (memmq.server.forwarded): whose X-Forwarded-For and
X-Forwarded-Proto are believed, and the client address they give.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from memmq.broker import Broker
from memmq.server.forwarded import NO_PROXIES, TrustedProxiesError, client_address, parse_trusted_proxies
from memmq.server.web import MemmqSite
from tests.support import exchange, logged_events


def _request(peer, forwarded_for=None, proto=None, secure=False):
    request = DummyRequest([b"pub"])
    request.client = peer
    request.isSecure = lambda: secure
    if forwarded_for is not None:
        request.requestHeaders.addRawHeader(b"X-Forwarded-For", forwarded_for)
    if proto is not None:
        request.requestHeaders.addRawHeader(b"X-Forwarded-Proto", proto)
    return request


class ParseTests(SynchronousTestCase):
    def test_addresses_networks_unix(self) -> None:
        """
        Addresses, networks (v4 and v6) and unix, comma-separated.
        """
        trusted = parse_trusted_proxies(["127.0.0.1, 10.0.0.0/8,[::1],unix"])
        self.assertTrue(trusted.trusts("127.0.0.1"))
        self.assertTrue(trusted.trusts("10.1.2.3"))
        self.assertTrue(trusted.trusts("::1"))
        self.assertTrue(trusted.trusts("::ffff:10.0.0.1"))
        self.assertFalse(trusted.trusts("192.168.0.1"))
        self.assertFalse(trusted.trusts("not an address"))
        self.assertTrue(trusted.unix)

    def test_empty_trusts_nobody(self) -> None:
        self.assertFalse(parse_trusted_proxies([""]))
        self.assertFalse(NO_PROXIES.trusts("127.0.0.1"))

    def test_bad_entry(self) -> None:
        """
        An entry that is not an address says which.
        """
        with self.assertRaises(TrustedProxiesError) as caught:
            parse_trusted_proxies(["10.0.0.0/8,proxy.example"])
        self.assertIn("'proxy.example'", str(caught.exception))


class ClientAddressTests(SynchronousTestCase):
    trusted = parse_trusted_proxies(["127.0.0.1,10.0.0.0/8"])

    def test_untrusted_peer_headers_ignored(self) -> None:
        """
        A peer that is not a trusted proxy is the client, whatever it says.
        """
        request = _request(IPv4Address("TCP", "192.0.2.9", 1), b"203.0.113.7", b"https")
        address = client_address(request, self.trusted)
        self.assertEqual((address.host, address.secure), ("192.0.2.9", False))

    def test_trusted_peer(self) -> None:
        """
        Behind a trusted proxy, the client is the address it forwards, and
        the scheme the one it was reached with.
        """
        request = _request(IPv4Address("TCP", "127.0.0.1", 1), b"203.0.113.7", b"https")
        address = client_address(request, self.trusted)
        self.assertEqual((address.host, address.secure), ("203.0.113.7", True))

    def test_rightmost_untrusted_wins(self) -> None:
        """
        What the client wrote itself (to the left) is not believed: the
        last address that is not a trusted proxy is the client.
        """
        request = _request(IPv4Address("TCP", "127.0.0.1", 1), b"6.6.6.6, 203.0.113.7, 10.0.0.2")
        self.assertEqual(client_address(request, self.trusted).host, "203.0.113.7")

    def test_trusted_without_header(self) -> None:
        request = _request(IPv6Address("TCP", "::1", 1))
        self.assertEqual(client_address(request, parse_trusted_proxies(["::1"])).host, "::1")

    def test_unix_peer(self) -> None:
        """
        A peer on a UNIX socket is believed only when unix is listed.
        """
        request = _request(UNIXAddress(b"/run/memmq.sock"), b"203.0.113.7")
        self.assertEqual(client_address(request, self.trusted).host, "-")
        self.assertEqual(client_address(request, parse_trusted_proxies(["unix"])).host, "203.0.113.7")


class AccessLogTests(SynchronousTestCase):
    def logged(self, site: MemmqSite, headers: bytes) -> str:
        events = logged_events(self)
        exchange(site, b"POST /pub?topic=t HTTP/1.1\r\nHost: x\r\n" + headers + b"Content-Length: 1\r\n\r\nx")
        lines = [e["line"] for e in events if e.get("log_namespace") == "memmq.access"]
        self.assertEqual(len(lines), 1)
        return lines[0]

    def test_access_log_shows_forwarded_client(self) -> None:
        """
        The access log names the client behind a trusted proxy.
        """
        # exchange()'s transport has the peer 192.168.1.1.
        site = MemmqSite(Broker(), access_log=True, trusted_proxies=parse_trusted_proxies(["192.168.1.1"]))
        line = self.logged(site, b"X-Forwarded-For: 203.0.113.7\r\n")
        self.assertTrue(line.startswith('"203.0.113.7"'), line)

    def test_access_log_ignores_header_by_default(self) -> None:
        site = MemmqSite(Broker(), access_log=True)
        line = self.logged(site, b"X-Forwarded-For: 203.0.113.7\r\n")
        self.assertNotIn("203.0.113.7", line)
