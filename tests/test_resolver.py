"""
Tests for memmq.client.resolver: IP passes names through; DNS looks them up
against a real DNS server (twisted.names, in this process, on loopback)
whose records each test changes as it goes.
"""

from __future__ import annotations

import ipaddress

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks, succeed
from twisted.internet.error import CannotListenError
from twisted.names import client, dns
from twisted.names.common import ResolverBase
from twisted.names.server import DNSServerFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from memmq.client.resolver import DNS, IP, IResolver, ResolveError
from memmq.errors import MemmqError
from tests.support import Zone, bounded

TIMEOUT = 10  # seconds: the bound on each resolution in these tests


class Pending(ResolverBase):
    """
    A DNS resolver whose lookups never finish, to be cancelled.

    @ivar lookups: the names looked up, in order.
    @ivar cancelled: the names whose lookup was cancelled.
    """

    def __init__(self) -> None:
        super().__init__()
        self.lookups: list[bytes] = []
        self.cancelled: list[bytes] = []

    def _lookup(self, name, cls, type, timeout):
        self.lookups.append(name)
        return Deferred(lambda d: self.cancelled.append(name))


class Server(DNSServerFactory):
    """
    A DNS server for L{Zone} that truncates UDP answers at 512 bytes, as
    real servers do (twisted.names' own never truncates), so that big
    answers go over TCP; and that says when its TCP connections are gone.
    """

    def __init__(self, zone: Zone) -> None:
        super().__init__(authorities=[zone])
        self._idle: list[Deferred[None]] = []

    def sendReply(self, protocol, message, address):
        if address is not None:
            message.maxSize = 512
        super().sendReply(protocol, message, address)

    def connectionLost(self, protocol):
        super().connectionLost(protocol)
        if not self.connections:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)

    def idle(self) -> Deferred[None]:
        """
        Fire once no TCP connection is open.
        """
        if not self.connections:
            return succeed(None)
        self._idle.append(Deferred())
        return self._idle[-1]


@inlineCallbacks
def dns_server(testcase: TestCase, factory: Server):
    """
    Serve with C{factory} on 127.0.0.1, UDP and TCP on one port, until
    C{testcase} ends; fire with the port.
    """
    for _ in range(20):
        udp = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
        port = udp.getHost().port
        try:
            tcp = reactor.listenTCP(port, factory, interface="127.0.0.1")
        except CannotListenError:
            # Taken for TCP by someone else: try another.
            yield udp.stopListening()
            continue
        testcase.addCleanup(udp.stopListening)
        testcase.addCleanup(tcp.stopListening)
        return port
    raise RuntimeError("no port free for both UDP and TCP")


@inlineCallbacks
def closed_port():
    """
    Fire with a UDP port on 127.0.0.1 that nothing listens on (any more).
    """
    udp = reactor.listenUDP(0, dns.DNSDatagramProtocol(None), interface="127.0.0.1")
    port = udp.getHost().port
    yield udp.stopListening()
    return port


class IPTests(SynchronousTestCase):
    """
    Tests for L{IP}.
    """

    def test_interface(self) -> None:
        """
        L{IP} provides L{IResolver}.
        """
        self.assertTrue(verifyObject(IResolver, IP()))

    def test_name_unchanged(self) -> None:
        """
        The name is the one server, as given, whatever it looks like.
        """
        for name in ["localhost:8081", "memmq.example.com", "https://10.0.0.1:9000", "[::1]:8081", "x"]:
            self.assertEqual(self.successResultOf(IP().resolve(name)), [name])


class DNSWithoutLookupTests(SynchronousTestCase):
    """
    Tests for what L{DNS} answers without asking any DNS server: IP
    literals, names it cannot take apart, and its default resolver.
    """

    def test_interface(self) -> None:
        """
        L{DNS} provides L{IResolver}.
        """
        self.assertTrue(verifyObject(IResolver, DNS(resolver=Pending())))

    def test_literals(self) -> None:
        """
        An IP address is its own answer, in the form of a server: the
        default port added when none is given, IPv6 in brackets, the scheme
        and port of a URL kept.
        """
        resolver = Pending()
        cases = [
            ("10.0.0.1", "10.0.0.1:8081"),
            ("10.0.0.1:9000", "10.0.0.1:9000"),
            ("::1", "[::1]:8081"),
            ("[2001:db8::1]:9000", "[2001:db8::1]:9000"),
            ("https://10.0.0.1:9000", "https://10.0.0.1:9000"),
            ("http://[::1]", "http://[::1]:8081"),
        ]
        for name, server in cases:
            self.assertEqual(self.successResultOf(DNS(resolver=resolver).resolve(name)), [server], name)
        self.assertEqual(self.successResultOf(DNS(resolver, default_port=1234).resolve("10.0.0.1")), ["10.0.0.1:1234"])
        self.assertEqual(resolver.lookups, [])

    def test_bad_names(self) -> None:
        """
        A name that is not host, host:port or an http(s) URL fails at once
        with a one-line L{ResolveError} naming it, and nothing is looked up.
        """
        resolver = Pending()
        for name in ["ftp://files.test:21", "host.test:port", "[::1", "", "https://", "host.test:70000"]:
            failure = self.failureResultOf(DNS(resolver=resolver).resolve(name), ResolveError)
            message = str(failure.value)
            self.assertTrue(message.startswith(f"cannot resolve {name}: "), message)
            self.assertNotIn("\n", message)
        self.assertEqual(resolver.lookups, [])

    def test_default_resolver_lazy(self) -> None:
        """
        Without a resolver, L{DNS} makes the system's only when it first
        looks a name up: constructing it or resolving an IP literal touches
        neither the network nor the reactor (the system resolver would have
        scheduled its re-reading of resolv.conf).
        """
        before = set(reactor.getDelayedCalls())
        resolver = DNS()
        self.assertEqual(self.successResultOf(resolver.resolve("10.0.0.1")), ["10.0.0.1:8081"])
        self.assertEqual(set(reactor.getDelayedCalls()), before)

    def test_cancel(self) -> None:
        """
        Cancelling a resolution cancels both lookups and fails with
        L{CancelledError}, not L{ResolveError}.
        """
        resolver = Pending()
        d = DNS(resolver=resolver).resolve("svc.test")
        self.assertEqual(resolver.lookups, [b"svc.test", b"svc.test"])
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(resolver.cancelled, [b"svc.test", b"svc.test"])


class DNSTests(TestCase):
    """
    Tests for L{DNS} against a DNS server on loopback serving L{Zone}.
    """

    @inlineCallbacks
    def setUp(self):
        self.zone = Zone()
        server = Server(self.zone)
        port = yield dns_server(self, server)
        # No cache: client.Resolver has none, and the records' TTL is 0.
        self.names = client.Resolver(servers=[("127.0.0.1", port)], timeout=(TIMEOUT / 2,))
        self.dns = DNS(resolver=self.names)

        def close_tcp() -> Deferred[None]:
            # client.Resolver keeps its TCP connection for the next query.
            for protocol in list(self.names.connections):
                protocol.transport.loseConnection()
            return server.idle()

        self.addCleanup(close_tcp)

    def resolve(self, name: str, resolver: DNS | None = None) -> Deferred:
        return bounded((resolver or self.dns).resolve(name), TIMEOUT)

    @inlineCallbacks
    def test_ipv4_only(self):
        """
        A name with A records only resolves to its IPv4 addresses on the
        default port, sorted as numbers, not as strings.
        """
        self.zone.addresses["svc.test"] = ["10.0.0.10", "10.0.0.9", "10.0.0.2"]
        servers = yield self.resolve("svc.test")
        self.assertEqual(servers, ["10.0.0.2:8081", "10.0.0.9:8081", "10.0.0.10:8081"])
        self.assertEqual(sorted(self.zone.queries), [("svc.test", dns.A), ("svc.test", dns.AAAA)])

    @inlineCallbacks
    def test_ipv6_only(self):
        """
        A name with AAAA records only resolves to its IPv6 addresses, in
        brackets, sorted.
        """
        self.zone.addresses["svc.test"] = ["2001:db8::10", "2001:db8::9", "fd00::1"]
        servers = yield self.resolve("svc.test:9000")
        self.assertEqual(servers, ["[2001:db8::9]:9000", "[2001:db8::10]:9000", "[fd00::1]:9000"])

    @inlineCallbacks
    def test_both(self):
        """
        With both, the IPv4 addresses come first, then the IPv6 ones, each
        group sorted.
        """
        self.zone.addresses["svc.test"] = ["fd00::2", "192.168.1.1", "fd00::1", "10.1.0.1"]
        servers = yield self.resolve("svc.test:9000")
        self.assertEqual(servers, ["10.1.0.1:9000", "192.168.1.1:9000", "[fd00::1]:9000", "[fd00::2]:9000"])

    @inlineCallbacks
    def test_ports(self):
        """
        The port of C{name:port} is kept; a name without one gets the
        resolver's default port.
        """
        self.zone.addresses["svc.test"] = ["10.0.0.1"]
        self.assertEqual((yield self.resolve("svc.test:9000")), ["10.0.0.1:9000"])
        self.assertEqual((yield self.resolve("svc.test")), ["10.0.0.1:8081"])
        other = DNS(resolver=self.names, default_port=7000)
        self.assertEqual((yield self.resolve("svc.test", other)), ["10.0.0.1:7000"])

    @inlineCallbacks
    def test_scheme_kept(self):
        """
        An http(s) URL comes back as URLs of the same scheme and port.
        """
        self.zone.addresses["svc.test"] = ["10.0.0.1", "fd00::1"]
        self.assertEqual(
            (yield self.resolve("https://svc.test:9000")), ["https://10.0.0.1:9000", "https://[fd00::1]:9000"]
        )
        self.assertEqual((yield self.resolve("http://svc.test:80")), ["http://10.0.0.1:80", "http://[fd00::1]:80"])

    @inlineCallbacks
    def test_changes_followed(self):
        """
        Each resolution asks again: records added and removed since the
        last one show in the next.
        """
        self.zone.addresses["svc.test"] = ["10.0.0.1", "10.0.0.2"]
        self.assertEqual((yield self.resolve("svc.test")), ["10.0.0.1:8081", "10.0.0.2:8081"])
        self.zone.addresses["svc.test"] = ["10.0.0.3", "10.0.0.2", "fd00::1"]
        self.assertEqual((yield self.resolve("svc.test")), ["10.0.0.2:8081", "10.0.0.3:8081", "[fd00::1]:8081"])

    @inlineCallbacks
    def test_rotation_ignored(self):
        """
        The same addresses served in another order resolve to the same list,
        so a selector's choice does not flap with a round-robin server.
        """
        self.zone.addresses["svc.test"] = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "fd00::2", "fd00::1"]
        first = yield self.resolve("svc.test")
        self.zone.addresses["svc.test"] = ["fd00::1", "10.0.0.3", "fd00::2", "10.0.0.1", "10.0.0.2"]
        self.assertEqual((yield self.resolve("svc.test")), first)

    @inlineCallbacks
    def test_many_addresses(self):
        """
        A name with more addresses than a UDP answer holds resolves to all of
        them (the answer comes truncated, and again over TCP).
        """
        self.zone.addresses["big.test"] = [f"10.0.{i % 3}.{i}" for i in range(60)]
        servers = yield self.resolve("big.test")
        expected = sorted(self.zone.addresses["big.test"], key=ipaddress.ip_address)
        self.assertEqual(servers, [f"{address}:8081" for address in expected])
        self.assertEqual(len(self.names.connections), 1)

    @inlineCallbacks
    def test_cname(self):
        """
        A name that is an alias resolves to the addresses at the end of the
        chain; the CNAME record itself is no server.
        """
        self.zone.aliases["www.test"] = "svc.test"
        self.zone.addresses["svc.test"] = ["10.0.0.1", "fd00::1"]
        self.assertEqual((yield self.resolve("www.test:9000")), ["10.0.0.1:9000", "[fd00::1]:9000"])

    @inlineCallbacks
    def test_one_family_fails(self):
        """
        If one lookup fails ("no such name" for AAAA alone) the other's
        addresses are the answer.
        """
        self.zone.addresses["svc.test"] = ["10.0.0.1"]
        self.zone.missing.add(("svc.test", dns.AAAA))
        self.assertEqual((yield self.resolve("svc.test")), ["10.0.0.1:8081"])
        self.zone.addresses["svc.test"] = ["fd00::1"]
        self.zone.missing = {("svc.test", dns.A)}
        self.assertEqual((yield self.resolve("svc.test")), ["[fd00::1]:8081"])

    @inlineCallbacks
    def test_unknown_name(self):
        """
        A name the server does not know fails with a one-line
        L{ResolveError} naming it and saying why.
        """
        try:
            yield self.resolve("nosuch.test:9000")
        except ResolveError as e:
            self.assertIsInstance(e, MemmqError)
            self.assertEqual(str(e), "cannot resolve nosuch.test:9000: no such host")
        else:
            self.fail("resolved an unknown name")

    @inlineCallbacks
    def test_no_addresses(self):
        """
        A name that exists with no A or AAAA records is no server either.
        """
        self.zone.addresses["empty.test"] = []
        try:
            yield self.resolve("empty.test")
        except ResolveError as e:
            self.assertEqual(str(e), "cannot resolve empty.test: no address records")
        else:
            self.fail("resolved a name without addresses")

    @inlineCallbacks
    def test_literal_without_lookup(self):
        """
        An IP literal is answered at once, asking no DNS server: here the
        only one configured is a closed port, which could not have answered.
        """
        port = yield closed_port()
        names = client.Resolver(servers=[("127.0.0.1", port)], timeout=(TIMEOUT / 2,))
        resolver = DNS(resolver=names)
        self.assertEqual(self.successResultOf(resolver.resolve("10.0.0.7:9000")), ["10.0.0.7:9000"])
        self.assertEqual(self.successResultOf(resolver.resolve("https://[fd00::7]")), ["https://[fd00::7]:8081"])
        self.assertEqual(self.zone.queries, [])
