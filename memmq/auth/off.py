# -*- test-case-name: tests.test_auth_authority -*-
"""
Access control off (no C{--auth_file}, no C{--jwt_key}; the default, as in
asim/mq): everyone may do everything.  It answers the same questions as
L{memmq.auth.authority.Authority}, so a front-end asks them either way.
"""

from __future__ import annotations

from collections.abc import Sequence

from zope.interface import implementer

from memmq.auth.interface import IAuthority
from memmq.auth.model import Identity
from memmq.patterns import Pattern

__all__ = ["AccessOff", "OFF"]


@implementer(IAuthority)
class AccessOff:
    """
    Allows everything, and identifies no one: credentials a client sends
    anyway are ignored, so a client configured for a server with access
    control also works against one without.
    """

    enabled = False

    def identify_token(self, token: str | None) -> Identity | None:
        return None

    def identify_certificate(self, names: Sequence[str]) -> Identity | None:
        return None

    def may_publish(self, identity: Identity | None, topic: str) -> bool:
        return True

    def may_subscribe(self, identity: Identity | None, wanted: str | Pattern) -> bool:
        return True

    def may_read_stats(self, identity: Identity | None) -> bool:
        return True

    def check_publish(self, identity: Identity | None, topic: str) -> None:
        pass

    def check_subscribe(self, identity: Identity | None, wanted: str | Pattern) -> None:
        pass

    def check_read_stats(self, identity: Identity | None) -> None:
        pass

    def reload(self) -> str:
        return "access control is off: nothing to reload"

    def describe(self) -> str:
        return "access control off: anyone who reaches the port may publish, subscribe and read /stats and /metrics"


OFF = AccessOff()
