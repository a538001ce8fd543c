# -*- test-case-name: tests.test_auth_authority -*-
"""
The one place that decides who may do what, when access control is on.

Every transport asks the same L{IAuthority}: it identifies a client once per
connection, then asks before each publish, subscription or read of the
figures.  Decisions are cached per identity and topic, so asking again for a
topic already decided costs one dictionary look-up; a reload forgets them.

L{make_authority} builds one from the options, or returns L{OFF} when no
access-control option was given.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence

from twisted.logger import Logger
from zope.interface import implementer

from memmq.auth.authfile import AuthRules, load_auth_file
from memmq.auth.decisions import DECISION_CACHE_SIZE, DecisionCache
from memmq.auth.errors import AuthConfigError, Forbidden, Unauthenticated
from memmq.auth.interface import IAuthority
from memmq.auth.model import NOTHING, Identity, Permissions
from memmq.auth.off import OFF, AccessOff
from memmq.auth.webtokens import LEEWAY, JwtVerifier, load_jwt_key, looks_like_jwt
from memmq.patterns import Pattern

__all__ = ["Authority", "make_authority"]

_log = Logger()

# How much of a topic a refusal quotes, so that it stays one short line.
_QUOTED = 60

_PUBLISH = "publish"
_SUBSCRIBE = "subscribe"
_SUBSCRIBE_PATTERN = "subscribe-pattern"


def make_authority(
    auth_file: str | None = None,
    jwt_key: str | None = None,
    jwt_leeway: float = LEEWAY,
    jwt_audience: str | None = None,
    now: Callable[[], float] = time.time,
) -> Authority | AccessOff:
    """
    The authority the options describe: L{OFF} when neither C{auth_file}
    nor C{jwt_key} is given.

    @raise AuthConfigError: a file cannot be used; the message is one line
        for the start-up error (exit 2).
    """
    if auth_file is None and jwt_key is None:
        return OFF
    return Authority(auth_file=auth_file, jwt_key=jwt_key, jwt_leeway=jwt_leeway, jwt_audience=jwt_audience, now=now)


@implementer(IAuthority)
class Authority:
    """
    Access control on: identities from an auth file (tokens, certificate
    names) and from JWTs, permissions from the file or the JWT's claims,
    and anonymous as the file's C{[anonymous]} table says (nothing without
    one).

    Not thread-safe: the reactor thread alone asks.
    """

    enabled = True

    def __init__(
        self,
        auth_file: str | None = None,
        jwt_key: str | None = None,
        jwt_leeway: float = LEEWAY,
        jwt_audience: str | None = None,
        now: Callable[[], float] = time.time,
        cache_size: int = DECISION_CACHE_SIZE,
    ) -> None:
        """
        @raise AuthConfigError: a file cannot be used.
        """
        self._auth_file = auth_file
        self._jwt_key = jwt_key
        self._jwt_leeway = jwt_leeway
        self._jwt_audience = jwt_audience
        self._now = now
        self._decisions = DecisionCache(cache_size)
        self._rules, self._jwt = self._load()

    def _load(self) -> tuple[AuthRules | None, JwtVerifier | None]:
        rules = None if self._auth_file is None else load_auth_file(self._auth_file)
        verifier = None
        if self._jwt_key is not None:
            verifier = JwtVerifier(load_jwt_key(self._jwt_key), self._jwt_leeway, self._jwt_audience)
        return rules, verifier

    @property
    def anonymous(self) -> Permissions:
        """
        What a client with no credentials may do.
        """
        return NOTHING if self._rules is None else self._rules.anonymous

    def describe(self) -> str:
        sources = []
        if self._rules is not None:
            sources.append("auth file " + self._rules.describe())
        else:
            sources.append("anonymous: nothing")
        if self._jwt is not None:
            sources.append("JWT " + self._jwt.key.describe())
        return "access control on: " + "; ".join(sources)

    def reload(self) -> str:
        try:
            rules, verifier = self._load()
        except AuthConfigError as e:
            line = f"access control not reloaded, keeping the previous rules: {e}"
            _log.warn("{line}", line=line)
            return line
        self._rules, self._jwt = rules, verifier
        self._decisions.clear()
        line = "access control reloaded: " + self.describe().removeprefix("access control on: ")
        _log.info("{line}", line=line)
        return line

    # Identities

    def identify_token(self, token: str | None) -> Identity | None:
        if not token:
            return None
        if looks_like_jwt(token):
            if self._jwt is None:
                raise Unauthenticated("a JWT was given, but this server is given no JWT key")
            return self._jwt.identify(token)
        identity = None if self._rules is None else self._rules.identify_token(token)
        if identity is None:
            raise Unauthenticated("unknown token")
        return identity

    def identify_certificate(self, names: Sequence[str]) -> Identity | None:
        if not names:
            return None
        identity = None if self._rules is None else self._rules.identify_certificate(names)
        if identity is None:
            raise Unauthenticated(f"no user in the auth file has the certificate name {_quoted(names[0])}")
        return identity

    # Decisions

    def may_publish(self, identity: Identity | None, topic: str) -> bool:
        return self._decide(identity, _PUBLISH, topic, lambda p: p.may_publish(topic))

    def may_subscribe(self, identity: Identity | None, wanted: str | Pattern) -> bool:
        if isinstance(wanted, Pattern):
            return self._decide(identity, _SUBSCRIBE_PATTERN, wanted.text, lambda p: p.may_subscribe(wanted))
        return self._decide(identity, _SUBSCRIBE, wanted, lambda p: p.may_subscribe(wanted))

    def may_read_stats(self, identity: Identity | None) -> bool:
        if self._expired(identity):
            return False
        return self._permissions(identity).admin

    def check_publish(self, identity: Identity | None, topic: str) -> None:
        if not self.may_publish(identity, topic):
            raise self._refusal(identity, f"publish to {_quoted(topic)}")

    def check_subscribe(self, identity: Identity | None, wanted: str | Pattern) -> None:
        if not self.may_subscribe(identity, wanted):
            if isinstance(wanted, Pattern):
                raise self._refusal(identity, f"subscribe to the pattern {_quoted(wanted.text)}")
            raise self._refusal(identity, f"subscribe to {_quoted(wanted)}")

    def check_read_stats(self, identity: Identity | None) -> None:
        if not self.may_read_stats(identity):
            raise self._refusal(identity, "read /stats and /metrics")

    def _decide(
        self, identity: Identity | None, action: str, topic: str, allowed: Callable[[Permissions], bool]
    ) -> bool:
        if self._expired(identity):
            return False
        key: Hashable = (identity, action, topic)
        decision = self._decisions.get(key)
        if decision is None:
            decision = allowed(self._permissions(identity))
            self._decisions.put(key, decision)
        return decision

    def _permissions(self, identity: Identity | None) -> Permissions:
        return self.anonymous if identity is None else identity.permissions

    def _expired(self, identity: Identity | None) -> bool:
        return identity is not None and identity.expires is not None and self._now() >= identity.expires

    def _refusal(self, identity: Identity | None, what: str) -> Unauthenticated | Forbidden:
        if identity is None:
            return Unauthenticated(f"no credentials, and anonymous may not {what}")
        if self._expired(identity):
            return Unauthenticated(f"the JWT for {_quoted(identity.name)} has expired")
        return Forbidden(f"{_quoted(identity.name)} may not {what}")


def _quoted(text: str) -> str:
    if len(text) > _QUOTED:
        text = text[:_QUOTED] + "…"
    return repr(text)
