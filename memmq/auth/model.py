# -*- test-case-name: tests.test_auth_model -*-
"""
What an identity may do: the values the rest of access control passes
around, with no I/O and no configuration in them.

L{Permissions} are the topics an identity may publish to and subscribe to,
as patterns (C{orders.new}, C{orders.*}, C{orders.>}, C{>}: see
L{memmq.patterns}), and whether it may read C{/stats} and C{/metrics}
(C{admin}).  An L{Identity} is who a credential says the client is, with the
permissions it had when it was identified (once per connection) and, for a
JWT, when it stops being accepted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from memmq.auth.coverage import covers
from memmq.patterns import Pattern, parse_pattern

__all__ = ["Permissions", "Identity", "NOTHING", "EVERYTHING"]


@dataclass(frozen=True)
class Permissions:
    """
    The topics an identity may publish to and subscribe to, and whether it
    may read the server's figures.

    @ivar publish: an identity may publish to a topic one of these matches.
    @ivar subscribe: an identity may subscribe to a topic one of these
        matches, and to a pattern one of these covers
        (L{memmq.auth.coverage.covers}).
    @ivar admin: may read C{/stats} and C{/metrics}.
    """

    publish: tuple[Pattern, ...] = ()
    subscribe: tuple[Pattern, ...] = ()
    admin: bool = False

    @classmethod
    def from_texts(cls, publish: Iterable[str] = (), subscribe: Iterable[str] = (), admin: bool = False) -> Permissions:
        """
        Permissions from pattern texts.

        @raise memmq.errors.InvalidPattern: a text is not a valid pattern.
        """
        return cls(
            publish=tuple(parse_pattern(text) for text in publish),
            subscribe=tuple(parse_pattern(text) for text in subscribe),
            admin=bool(admin),
        )

    def may_publish(self, topic: str) -> bool:
        """
        Whether a message may be published to C{topic} (a topic, never read
        as a pattern).
        """
        return any(allowed.matches(topic) for allowed in self.publish)

    def may_subscribe(self, wanted: str | Pattern) -> bool:
        """
        Whether C{wanted} may be subscribed to: a topic (a L{str}, never read
        as a pattern) one of the C{subscribe} patterns matches, or a
        L{Pattern} one of them covers.
        """
        if isinstance(wanted, Pattern):
            return any(covers(allowed, wanted) for allowed in self.subscribe)
        return any(allowed.matches(wanted) for allowed in self.subscribe)

    def describe(self) -> str:
        """
        One line saying what these permissions give, for logs.
        """
        parts = []
        if self.publish:
            parts.append("publish to " + ", ".join(p.text for p in self.publish))
        if self.subscribe:
            parts.append("subscribe to " + ", ".join(p.text for p in self.subscribe))
        if self.admin:
            parts.append("read /stats and /metrics")
        return "; ".join(parts) if parts else "nothing"


NOTHING = Permissions()
EVERYTHING = Permissions.from_texts(publish=[">"], subscribe=[">"], admin=True)


@dataclass(frozen=True, eq=False)
class Identity:
    """
    Who a credential says the client is.

    Compared and hashed by object, so that the decisions cached for one are
    found in one dictionary look-up: an auth file's users are made once per
    load and shared by every connection that presents their token.

    @ivar name: the user's name in the auth file, or a JWT's C{sub}.
    @ivar permissions: what it may do, as they were when it was identified:
        a reload applies to connections made after it.
    @ivar source: C{"token"}, C{"certificate"} or C{"jwt"}.
    @ivar expires: for a JWT, the time (seconds since the epoch) from which
        memmq refuses it: its C{exp} claim plus the configured leeway.  A
        front-end closes a subscriber at that time.  L{None} otherwise.
    """

    name: str
    permissions: Permissions
    source: str
    expires: float | None = None

    def __repr__(self) -> str:
        return f"<Identity {self.name!r} from {self.source}>"
