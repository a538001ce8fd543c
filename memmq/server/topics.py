"""
The topic of a request, taken from its query string (C{?topic=NAME}).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from memmq.broker import check_topic
from memmq.errors import InvalidTopic

__all__ = ["topic_from_query"]


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
