"""
A topic's log: the messages published since its waiting subscribers were
last written to, kept once for all of them.

With many subscribers on a topic, handing each message to each subscriber
(a call, a frame appended to its list) cost more than writing to them:
1,000 subscribers made a publish 1,000 Python calls, though every
subscriber was only going to be written to in a later turn of the reactor,
with the messages of many publishes at once.  A subscriber that can
I{follow} (an L{memmq.interfaces.IFollower}; see
L{memmq.topics.Subscription}) is
instead told once that its topic has something for it, and from then on a
publish only appends to the topic's log; when the subscriber is flushed it
takes everything from where it started following, framed and joined once
for every subscriber that takes the same stretch of the log (those flushed
in the same turn of the reactor do).

The log is a chain of L{Chunk}s, so that a chunk every subscriber has read
past is freed as soon as the last of them lets go of it; the topic keeps
its tail only while a subscriber follows.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["CHUNK", "Chunk", "Cursor", "Joined", "read", "joined"]

# Messages per chunk: what is freed at once once read by everyone.
CHUNK = 256


class Chunk:
    """
    One stretch of a topic's log, and the next one once this one is full.
    """

    __slots__ = ("messages", "next")

    def __init__(self) -> None:
        self.messages: list = []
        self.next: Chunk | None = None


# Where a follower starts: its chunk and the index in it.
Cursor = tuple[Chunk, int]


def read(cursor: Cursor) -> tuple[list, Chunk, int]:
    """
    The messages from C{cursor} to the end of the log, and where the end is
    (its chunk and length).
    """
    chunk, index = cursor
    messages = chunk.messages[index:]
    while chunk.next is not None:
        chunk = chunk.next
        messages += chunk.messages
    return messages, chunk, len(chunk.messages)


class Joined:
    """
    The last stretch of a log read and framed one way: the subscribers
    flushed one after another took the same stretch, and write the same
    bytes.  A topic keeps one per framing its followers use (WebSocket
    frames, Server-Sent Events, bare payloads), so that followers of
    several kinds on one topic do not undo each other's.
    """

    __slots__ = ("start", "end", "data")

    def __init__(self) -> None:
        self.start: Cursor | None = None
        self.end: Cursor | None = None
        self.data = b""


def joined(cache: Joined, cursor: Cursor, framing: Callable) -> bytes:
    """
    The messages from C{cursor} to the end of the log, each framed by
    C{framing} (see L{memmq.topics.Message.framed}) and joined: computed
    once for every follower that takes the same stretch, kept in C{cache}
    (the topic's for this framing).
    """
    start_chunk, start_index = cursor
    end = cache.end
    if (
        end is not None
        and cache.start[0] is start_chunk
        and cache.start[1] == start_index
        and end[0].next is None
        and len(end[0].messages) == end[1]
    ):
        return cache.data
    messages, end_chunk, end_index = read(cursor)
    if len(messages) == 1:
        data = messages[0].framed(framing)
    else:
        data = b"".join([message.framed(framing) for message in messages])
    cache.start = cursor
    cache.end = (end_chunk, end_index)
    cache.data = data
    return data
