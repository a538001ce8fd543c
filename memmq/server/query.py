"""
What a request's query string names: its topic (C{?topic=NAME}) and, for a
replaying subscriber, C{since} (C{&since=<unix ns>}); a subscriber's
subject is a topic or a pattern (C{?pattern=orders.*}), in a queue group
or not (C{&group=NAME}).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from memmq.broker import check_group, check_topic
from memmq.errors import BadQuery, InvalidTopic
from memmq.interfaces import IBroker, ISubscriber, ISubscription
from memmq.patterns import Pattern, parse_pattern

__all__ = [
    "NO_REPLAY",
    "Subject",
    "subject_from_query",
    "subscribe_subject",
    "topic_from_query",
    "since_from_query",
]

#: What a subscription names: a topic, or a pattern of topics.
Subject = str | Pattern

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


def _text(args: Mapping, name: str) -> str | None:
    """
    The first value of C{name} in parsed query C{args}, as text, or
    L{None} when absent.
    """
    values: Sequence | None = args.get(name.encode()) if name.encode() in args else args.get(name)
    if not values:
        return None
    value = values[0]
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidTopic(f"{name} is not valid UTF-8") from None
    return value


def subject_from_query(args: Mapping) -> tuple[Subject, str | None]:
    """
    A subscriber's subject (its C{topic}, or its C{pattern} parsed) and
    queue group (L{None}: none) in parsed query C{args}.

    @raise InvalidTopic: no topic or pattern, both, or one that is not
        acceptable (L{memmq.errors.InvalidPattern} for a pattern), or a
        group that is not.
    """
    pattern = _text(args, "pattern")
    group = _text(args, "group")
    if group is not None:
        group = check_group(group)
    if pattern is None:
        return topic_from_query(args), group
    if _text(args, "topic") is not None:
        raise InvalidTopic("give a topic or a pattern, not both")
    return parse_pattern(pattern), group


def subscribe_subject(
    broker: IBroker, subject: Subject, subscriber: ISubscriber, group: str | None = None
) -> ISubscription:
    """
    Subscribe C{subscriber} to C{subject}, a topic or a L{Pattern}.
    """
    if isinstance(subject, Pattern):
        return broker.subscribe_pattern(subject, subscriber, group)
    if group is None:
        return broker.subscribe(subject, subscriber)
    return broker.subscribe(subject, subscriber, group)
