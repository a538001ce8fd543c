# -*- test-case-name: tests.test_access -*-
"""
Access control at the front-ends: the glue between a request, a WebSocket
handshake or a gRPC call and the one L{IAuthority} that decides (README:
Access control).

L{Access} finds who a client is once per connection (from the credentials
L{memmq.server.credentials} reads; without any, anonymous), asks the
authority (which caches its decisions per identity and topic), checks a
browser's C{Origin} against C{--allowed_origins}, counts refusals for
C{/metrics} and logs them rate-limited, never a token.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence

from prometheus_client.core import CounterMetricFamily
from twisted.application.service import Service
from twisted.logger import Logger

from memmq.auth import OFF, AuthError, Forbidden, IAuthority, Identity, Unauthenticated
from memmq.logs import RateLimited
from memmq.server.credentials import bearer_token, certificate_names, peer_certificate, presented, presented_token

__all__ = ["Access", "AccessService", "EXPIRED_CLOSE_CODE", "OriginRefused", "refusal"]

_log = Logger()

#: The WebSocket close code of a connection whose JWT has expired (4000 +
#: HTTP's 401): the client reconnects with a new token.
EXPIRED_CLOSE_CODE = 4001
_KINDS = ("unauthenticated", "forbidden", "origin")


class OriginRefused(AuthError):
    """
    A WebSocket handshake from a browser page whose C{Origin} is not in
    C{--allowed_origins} (HTTP 403).
    """


class _Credentials:
    """
    Who a connection's client was found to be, kept on the connection so
    that the next request on it with the same token costs a comparison.
    """

    __slots__ = ("kind", "token", "identity", "generation", "published")

    def __init__(self, kind: int, token: bytes | None, identity: Identity | None, generation: int) -> None:
        self.kind = kind
        self.token = token
        self.identity = identity
        self.generation = generation
        # The topic this connection was last allowed to publish to, when
        # that cannot change (no JWT expiry): a publisher sending to one
        # topic is checked once per connection.
        self.published: str | None = None


class Access:
    """
    Access control as the front-ends ask it: one per server, shared by the
    HTTP site, its WebSockets and the gRPC service.

    @param authority: who decides (L{OFF}: everyone may do everything).
    @param allowed_origins: the C{Origin}s a WebSocket handshake may carry
        (scheme://host[:port]); L{None} or empty: any.
    @ivar refusals: refusals counted by kind, for C{/metrics}.
    """

    def __init__(
        self,
        authority: IAuthority = OFF,
        allowed_origins: Sequence[str] | None = None,
        clock=None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.authority = authority
        self.enabled = authority.enabled
        self.allowed_origins = frozenset(o.rstrip("/").lower() for o in allowed_origins or ())
        self.clock = clock
        self.refusals = dict.fromkeys(_KINDS, 0)
        self._logged = RateLimited(_log, clock)
        # Bumped by each reload: what connections found before it is found again.
        self._generation = 0

    def reload(self) -> str:
        """
        Reload the auth file (SIGHUP); the one line logged.  Requests after
        it, on new connections and on open ones, are decided by the new
        rules; a subscription already open stays.
        """
        line = self.authority.reload()
        self._generation += 1
        return line

    def summary(self) -> str:
        """
        The start-up line.  (Not C{describe}: a Prometheus registry would
        take that for a collector's own.)
        """
        line = self.authority.describe()
        if self.allowed_origins:
            line += "; WebSocket origins allowed: " + ", ".join(sorted(self.allowed_origins))
        return line

    # -- refusals ------------------------------------------------------------

    def refused(self, error: AuthError, where: str, peer: str = "") -> AuthError:
        """
        Count and log (rate-limited) the refusal C{error} of C{where} (the
        path or call); return it for the caller to raise.
        """
        kind = (
            "origin" if isinstance(error, OriginRefused)
            else "forbidden" if isinstance(error, Forbidden) else "unauthenticated"
        )
        self.refusals[kind] += 1
        self._logged.warn(
            "refused {where} from {peer}: {reason}", where=where, peer=peer or "?", reason=str(error)
        )
        return error

    def collect(self):
        """
        The refusal counters, for a Prometheus registry.
        """
        counter = CounterMetricFamily(
            "memmq_refusals", "Requests, handshakes and calls refused by access control, by kind.", labels=["kind"]
        )
        for kind in _KINDS:
            counter.add_metric([kind], self.refusals[kind])
        yield counter

    # -- identities ------------------------------------------------------------

    def identify(self, token: str | None, certificate: Callable[[], object] | None = None) -> Identity | None:
        """
        Who presents C{token} (or, without one, the client certificate
        C{certificate()} returns, if any); L{None}: anonymous.

        @raise Unauthenticated: the credentials name no one.
        """
        if token is not None:
            return self.authority.identify_token(token)
        peer = certificate() if certificate is not None else None
        if peer is None:
            return None
        return self.authority.identify_certificate(certificate_names(peer))

    def identify_request(self, request) -> Identity | None:
        """
        Who made the twisted.web C{request}: found once per connection (and
        again when the connection presents other credentials, or after a
        reload); later requests compare what they present with what the
        first presented, and nothing more.

        @raise Unauthenticated: the credentials name no one.
        """
        kind, raw = presented(request)
        channel = request.channel
        cache = getattr(channel, "memmq_credentials", None)
        if cache is not None and cache.generation == self._generation and cache.kind == kind:
            if raw is None or hmac.compare_digest(raw, cache.token):
                return cache.identity
        identity = self.identify(presented_token(kind, raw), lambda: peer_certificate(channel))
        channel.memmq_credentials = _Credentials(kind, raw, identity, self._generation)
        return identity

    # -- the questions a request asks ---------------------------------------------

    def _check(self, request, where: str, check: Callable[[Identity | None], None]) -> Identity | None:
        try:
            identity = self.identify_request(request)
            check(identity)
        except AuthError as e:
            raise self.refused(e, where, _peer(request)) from None
        return identity

    def check_publish(self, request, topic: str) -> Identity | None:
        """
        May C{request}'s client publish to C{topic}?  Its identity if so.

        @raise Unauthenticated: no or bad credentials (HTTP 401).
        @raise Forbidden: not allowed (HTTP 403).
        """
        if not self.enabled:
            return None
        try:
            identity = self.identify_request(request)
            credentials = request.channel.memmq_credentials
            if credentials.published != topic:
                self.authority.check_publish(identity, topic)
                if identity is None or identity.expires is None:
                    credentials.published = topic
        except AuthError as e:
            raise self.refused(e, "publish", _peer(request)) from None
        return identity

    def check_subscribe(self, request, wanted) -> Identity | None:
        """
        As L{check_publish}, to subscribe to C{wanted} (a topic or pattern).
        """
        if not self.enabled:
            return None
        return self._check(request, "subscribe", lambda identity: self.authority.check_subscribe(identity, wanted))

    def check_read_stats(self, request) -> None:
        """
        As L{check_publish}, to read C{/stats} or C{/metrics}.
        """
        if self.enabled:
            self._check(request, request.path.decode("latin-1"), self.authority.check_read_stats)

    def check_origin(self, request) -> None:
        """
        A WebSocket handshake carrying an C{Origin} not allowed is refused.

        @raise OriginRefused: (HTTP 403).
        """
        if not self.allowed_origins:
            return
        origin = request.getHeader(b"origin")
        if origin is None:
            return
        text = origin.decode("latin-1").strip()
        if text.rstrip("/").lower() not in self.allowed_origins:
            raise self.refused(
                OriginRefused(f"origin {text[:80]!r} is not allowed (--allowed_origins)"),
                "WebSocket handshake", _peer(request),
            )

    def at_expiry(self, identity: Identity | None, end: Callable[[], object]):
        """
        Call C{end} when C{identity}'s JWT expires; the delayed call (to
        cancel when the connection ends first), or L{None}.
        """
        if identity is None or identity.expires is None:
            return None
        return self.clock.callLater(max(0.0, identity.expires - self.clock.seconds()), end)

    # -- gRPC ------------------------------------------------------------------

    def check_call(self, metadata, action: str, topic: str, peer: str = "") -> Identity | None:
        """
        May the gRPC call with C{metadata} (its invocation metadata)
        C{action} (C{"publish"} or C{"subscribe"}) C{topic}?  On the reactor.

        @raise Unauthenticated: (gRPC UNAUTHENTICATED).
        @raise Forbidden: (gRPC PERMISSION_DENIED).
        """
        if not self.enabled:
            return None
        token = None
        for key, value in metadata or ():
            if key == "authorization":
                token = bearer_token(value)
                break
        try:
            identity = self.authority.identify_token(token)
            if action == "publish":
                self.authority.check_publish(identity, topic)
            else:
                self.authority.check_subscribe(identity, topic)
        except AuthError as e:
            raise self.refused(e, f"gRPC {action}", peer) from None
        return identity


def refusal(request, error: AuthError) -> bytes:
    """
    Answer C{request} with access control's refusal C{error}: 401 (with
    C{WWW-Authenticate: Bearer}) or 403, and the one-line reason as the
    body; a WebSocket handshake gets the reason as the status line's
    phrase too, the part a WebSocket client shows.
    """
    unauthenticated = isinstance(error, Unauthenticated)
    code = 401 if unauthenticated else 403
    reason = str(error)
    phrase = None
    upgrade = request.getHeader(b"upgrade")
    if upgrade is not None and b"websocket" in upgrade.lower():
        phrase = reason.encode("latin-1", "replace")[:200]
    request.setResponseCode(code, phrase)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    if unauthenticated:
        request.setHeader(b"www-authenticate", b"Bearer")
    return reason.encode("utf-8") + b"\n"


def _peer(request) -> str:
    peer = request.getClientAddress()
    host = getattr(peer, "host", None)
    return f"{host}:{peer.port}" if host is not None else str(peer)


class AccessService(Service):
    """
    Says at start, in one line, whether access control is on and what it
    takes (off: anyone who reaches the port may do anything).
    """

    name = "access"

    def __init__(self, access: Access) -> None:
        self.access = access

    def startService(self) -> None:
        super().startService()
        _log.info("memmq {line}", line=self.access.summary())
