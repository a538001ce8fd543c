"""
Replay: a subscriber that asks for C{since=<unix ns>} first gets the
persisted messages of its topic stamped later than that, then the live
ones, with no gap and no duplicate at the seam.

The seam is a timestamp.  The subscriber is registered with the broker
(paused, so live messages wait in its own bounded buffer) in the same
reactor turn as C{last} is asked of the replay source (L{IReplaySource.settle}):
every message stamped up to C{last} was published before, every later one
arrives live.  Once the writer has written everything up to C{last}, the
file is read up to its size at that moment and the lines stamped in
C{(since, last]} are sent; then the subscription is resumed and its buffer
drains.  A replay longer than the live buffer holds drops live messages for
that subscriber alone, as for any slow subscriber (README, "Delivery").

On a server run with C{--workers}, a topic's writer may be another process
(L{memmq.workers.persist}): the seam comes back from it later, and live
messages stamped up to it may have reached the paused subscription
meanwhile (this process already followed the topic).  Those are in the file
too, so they are taken out of the buffer (C{forget}) once the seam is
known: nothing is sent twice.  For a pattern, each topic has its writer's
seam.

Reading happens in a thread; one chunk at a time, and the next chunk only
while the subscriber's connection has room.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Callable, Iterator
from urllib.parse import unquote_to_bytes

from twisted.logger import Logger

from memmq.interfaces import IReplaySource, ISubscription
from memmq.patterns import Pattern
from memmq.persist.names import SUFFIX
from memmq.persist.record import parse

__all__ = [
    "CHUNK_BYTES", "MergedReader", "PatternReplay", "Replay", "Seams",
    "read_chunk", "read_lines", "read_merged", "replay_subject",
]

_log = Logger()

CHUNK_BYTES = 256 * 1024


def read_chunk(
    path: str, topic: str, since: int, last: int, offset: int, bound: int | None, size: int = CHUNK_BYTES
) -> tuple[list[bytes], int, int, bool]:
    """
    L{read_lines} without the count of lines skipped.
    """
    return read_lines(path, topic, since, last, offset, bound, size)[:4]


def read_lines(
    path: str, topic: str, since: int, last: int, offset: int, bound: int | None, size: int = CHUNK_BYTES
) -> tuple[list[bytes], int, int, bool, int]:
    """
    Read whole lines of C{path} from C{offset}, about C{size} bytes, not
    past C{bound} (the file's size on the first call, when L{None}).

    @return: the payloads of C{topic} stamped in C{(since, last]}, the
        offset to go on from, the bound, whether the end is reached, and
        how many lines were skipped.  A missing file holds nothing; a line
        that is not a record (torn by a crash, corrupt) is skipped and
        counted (empty lines are not counted).
    """
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return [], 0, 0, True, 0
    with f:
        if bound is None:
            bound = os.fstat(f.fileno()).st_size
        f.seek(offset)
        data = f.read(min(size, bound - offset))
        if data and not data.endswith(b"\n") and offset + len(data) < bound:
            data += f.readline()
    payloads = []
    skipped = 0
    for text in data.splitlines():
        try:
            record = parse(text)
        except ValueError:
            # A blank line (an editor's trailing one) holds nothing lost.
            skipped += 1 if text.strip() else 0
            continue
        if since < record.timestamp <= last and record.topic == topic:
            payloads.append(record.payload)
    offset += len(data)
    return payloads, offset, bound, not data or offset >= bound, skipped


class Seams:
    """
    The seams of a pattern's replay whose topics several processes write
    (C{--workers}): each topic's is its writer's.

    @param seams: each writer's seam, by its number.
    @param writer: the number of the writer of a topic.
    """

    def __init__(self, seams: list[int], writer: Callable[[str], int]) -> None:
        self.seams = seams
        self._writer = writer

    def __call__(self, topic: str) -> int:
        return self.seams[self._writer(topic)]

    @property
    def lowest(self) -> int:
        """
        Where a subscriber that resumes after the replay starts again: what
        it got is all stamped after the lowest, so it may get some of it
        again, but misses nothing.
        """
        return min(self.seams)


class Replay:
    """
    One subscriber's replay, between its subscription and its connection.

    @param source: where the persisted messages are read from.
    @param subscription: the broker's (L{memmq.topics.Subscription}), or
        one that passes C{pause}, C{resume} and C{forget} on to it.
    @param send: writes one payload to the subscriber's connection.
    @param fail: ends the subscriber's connection with a one-line reason.
    """

    def __init__(
        self,
        source: IReplaySource,
        topic: str,
        since: int,
        subscription: ISubscription,
        send: Callable[[bytes], object],
        fail: Callable[[str], object],
    ) -> None:
        # Must run in the turn that subscribed: see the module docstring.
        subscription.pause()
        #: the seam, once the source has given it (L{IReplaySource.settle})
        self.last: int | Callable[[str], int] | None = None
        self.active = True
        self.sent = 0
        self._source = source
        self._topic = topic
        self._since = since
        self._subscription = subscription
        self._send = send
        self._fail = fail
        self._paused = False
        self._waiting = True
        self._offset = 0
        self._bound: int | None = None
        self._settle().addCallbacks(self._settled, self._failed)

    def _settle(self):
        return self._source.settle(self._topic)

    def _settled(self, last) -> None:
        self._waiting = False
        if not self.active:
            return
        self.last = last
        seam = last if callable(last) else lambda topic: last
        # Live messages already in the buffer that the files hold too.
        self._subscription.forget(lambda message: message.stamp is not None and message.stamp <= seam(message.topic))
        if not callable(last) and self._since >= last:
            self._finish()
        else:
            self._next()

    def pause(self) -> bool:
        """
        The connection is full.  L{True} if the replay takes it (it is
        still going), else the caller pauses the subscription as usual.
        """
        if not self.active:
            return False
        self._paused = True
        return True

    def resume(self) -> bool:
        """
        The connection has room again; L{True} if the replay takes it.
        """
        if not self.active:
            return False
        self._paused = False
        if not self._waiting:
            self._next()
        return True

    def cancel(self) -> None:
        """
        The subscriber is gone: read no more.
        """
        self.active = False

    @property
    def end(self) -> int:
        """
        Once the replay has ended: the stamp a subscriber resumes from
        (a Server-Sent Events id) to get what came after it.
        """
        last = self.last
        return last.lowest if isinstance(last, Seams) else last  # type: ignore[return-value]

    def _next(self) -> None:
        self._waiting = False
        if not self.active or self._paused:
            return
        self._waiting = True
        self._source.read(self._topic, self._since, self.last, self._offset, self._bound).addCallbacks(
            self._got, self._failed
        )

    def _got(self, result) -> None:
        self._waiting = False
        if not self.active:
            return
        payloads, self._offset, self._bound, done = result
        for payload in payloads:
            self._send(payload)
        self.sent += len(payloads)
        if done:
            self._finish()
        else:
            self._next()

    def _failed(self, failure) -> None:
        self._waiting = False
        if not self.active:
            return
        self.active = False
        reason = f"cannot replay {self._topic!r}: {failure.getErrorMessage()}"
        _log.warn("{reason}", reason=reason)
        self._fail(reason)

    def _finish(self) -> None:
        self.active = False
        # A connection that is full now resumes the subscription itself
        # once it drains.
        if not self._paused:
            self._subscription.resume()


def replay_subject(
    source: IReplaySource,
    subject,
    since: int,
    subscription: ISubscription,
    send: Callable[[bytes], object],
    fail: Callable[[str], object],
):
    """
    The replay of a topic (L{Replay}) or of a pattern's topics
    (L{PatternReplay}), for a subscriber that is sent payloads alone.
    """
    if isinstance(subject, str):
        return Replay(source, subject, since, subscription, send, fail)
    return PatternReplay(source, subject, since, subscription, lambda topic, payload: send(payload), fail)


class MergedReader:
    """
    The persisted messages of every topic a pattern matches, stamped in
    C{(since, last]}, merged in timestamp order: each file is read line by
    line (each is in timestamp order already), up to its size when the
    reader was made.  Used from one thread at a time.
    """

    def __init__(self, directory: str, pattern: Pattern, since: int, last: int | Callable[[str], int]) -> None:
        # One seam for all, or each topic's own (its writer's, with workers).
        seam = last if callable(last) else lambda topic: last
        self._files = []
        streams = []
        for name in sorted(os.listdir(directory)):
            if not name.endswith(SUFFIX):
                continue
            path = os.path.join(directory, name)
            topic = _topic_of(path, name[: -len(SUFFIX)])
            if topic is None or not pattern.matches(topic):
                continue
            try:
                f = open(path, "rb")
            except OSError:
                continue
            self._files.append(f)
            streams.append(_records(f, topic, since, seam(topic)))
        self._merged = heapq.merge(*streams)

    def next(self, size: int = CHUNK_BYTES) -> tuple[list[tuple[str, bytes]], bool]:
        """
        The next messages, about C{size} payload bytes, as C{(topic,
        payload)}; and whether they are the last.
        """
        chunk: list[tuple[str, bytes]] = []
        taken = 0
        for _, topic, payload in self._merged:
            chunk.append((topic, payload))
            taken += len(payload) + 64
            if taken >= size:
                return chunk, False
        self.close()
        return chunk, True

    def close(self) -> None:
        for f in self._files:
            f.close()
        self._files = []


def _topic_of(path: str, stem: str) -> str | None:
    """
    The topic a file holds: its name decoded, or, for a name cut short
    (with C{~} and a hash), the topic of its first record.
    """
    if "~" not in stem:
        try:
            return unquote_to_bytes(stem).decode("utf-8")
        except UnicodeDecodeError:
            return None
    try:
        with open(path, "rb") as f:
            for line in f:
                try:
                    return parse(line).topic
                except ValueError:
                    continue
    except OSError:
        return None
    return None


def _records(f, topic: str, since: int, last: int) -> Iterator[tuple[int, str, bytes]]:
    bound = os.fstat(f.fileno()).st_size
    read = 0
    for line in f:
        read += len(line)
        if read > bound:
            return
        try:
            record = parse(line)
        except ValueError:
            continue
        if record.timestamp > last:
            return
        if record.timestamp > since and record.topic == topic:
            yield record.timestamp, topic, record.payload


def read_merged(
    directory: str, pattern: Pattern, since: int, last: int | Callable[[str], int], reader: MergedReader | None
) -> tuple[list[tuple[str, bytes]], MergedReader, bool]:
    """
    One step of a pattern's replay, in a thread: the next chunk of
    L{MergedReader}, made on the first call (C{reader} L{None}).
    """
    if reader is None:
        reader = MergedReader(directory, pattern, since, last)
    chunk, done = reader.next()
    return chunk, reader, done


class PatternReplay(Replay):
    """
    The replay of every topic C{pattern} matches, merged in timestamp
    order, with the seam of L{Replay}: the subscription is paused in the
    turn it was made, and resumed once the files are read up to C{last}.

    @param send: writes one message, given its topic and payload.
    """

    def __init__(
        self,
        source: IReplaySource,
        pattern: Pattern,
        since: int,
        subscription: ISubscription,
        send: Callable[[str, bytes], object],
        fail: Callable[[str], object],
    ) -> None:
        self._reader: MergedReader | None = None
        self._pattern = pattern
        super().__init__(source, pattern.text, since, subscription, send, fail)  # type: ignore[arg-type]

    def _settle(self):
        return self._source.settle(self._pattern)

    def _next(self) -> None:
        self._waiting = False
        if not self.active or self._paused:
            return
        self._waiting = True
        self._source.read_pattern(self._pattern, self._since, self.last, self._reader).addCallbacks(
            self._got_merged, self._failed
        )

    def _got_merged(self, result) -> None:
        self._waiting = False
        chunk, self._reader, done = result
        if not self.active:
            self._reader.close()
            return
        send = self._send
        for topic, payload in chunk:
            send(topic, payload)  # type: ignore[call-arg]
        self.sent += len(chunk)
        if done:
            self._finish()
        else:
            self._next()

    def cancel(self) -> None:
        super().cancel()
        if self._reader is not None and not self._waiting:
            self._reader.close()
