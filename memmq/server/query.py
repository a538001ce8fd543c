"""
What a request's query string names: its topic (C{?topic=NAME}) and, for a
replaying subscriber, C{since} (C{&since=<unix ns>}).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from memmq.broker import check_topic
from memmq.errors import BadQuery, InvalidTopic

__all__ = ["NO_REPLAY", "topic_from_query", "since_from_query"]

NO_REPLAY = "since needs a server run with --persist: this one keeps no messages to replay"


def topic_from_query(args: Mapping) -> str:
    """
    The checked topic in parsed query C{args}: twisted.web's (bytes keys and
    values) or autobahn's (str).  The first C{topic} wins, as in asim/mq.

    @raise InvalidTopic: no topic, an empty one, one that is not UTF-8, too
        long, or holding control characters.
    """
    values: Sequence | None = args.get(b"topic") if b"topic" in args else args.get("topic")
    if not values:
        raise InvalidTopic("no topic: give one as ?topic=NAME")
    topic = values[0]
    if isinstance(topic, bytes):
        try:
            topic = topic.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidTopic("topic is not valid UTF-8") from None
    return check_topic(topic)


def since_from_query(args: Mapping) -> int | None:
    """
    The C{since} of parsed query C{args} (as for L{topic_from_query}): a
    Unix time in nanoseconds, or L{None} when not asked for.

    @raise BadQuery: not a whole number of nanoseconds.
    """
    values: Sequence | None = args.get(b"since") if b"since" in args else args.get("since")
    if not values:
        return None
    since = values[0]
    if isinstance(since, bytes):
        since = since.decode("latin-1")
    if not (since.isascii() and since.isdigit()) or len(since) > 20:
        raise BadQuery("since must be a Unix time in nanoseconds (a whole number, as in the persisted files)")
    return int(since)
