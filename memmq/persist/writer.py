"""
The persistence writer: the service that turns published messages into
lines of their topics' files without making the reactor wait on a disk.

The reactor thread stamps each message (a Unix-nanosecond timestamp,
strictly increasing over the whole process, so that it orders messages and
marks the seam of a replay), encodes its line and adds it to the pending
batch.  One batch at a time goes to a single writer thread, which keeps
each topic's lines in publish order.  A batch leaves:

- in the default mode, at least every C{flush_interval} seconds, sooner
  once it holds L{BATCH_BYTES};
- in durable mode (C{sync}), as soon as the previous batch is done: the
  publishes that arrived meanwhile share one write and one fsync per file
  (group commit), and each is answered once its batch is on disk.

Past L{MAX_PENDING_BYTES} not yet written, a publish waits for the disk
(the HTTP answer comes later) instead of memory growing without bound.

A file that cannot be written is logged once, with the reason, until it
works again; its messages are counted, the server goes on, and in durable
mode their publishes fail with L{PersistError}.  On stop, everything
pending is written and every file fsynced and closed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from memmq.defaults import FLUSH_INTERVAL as DEFAULT_FLUSH_INTERVAL
from memmq.errors import PersistError
from memmq.interfaces import IReplaySource
from memmq.persist.files import Files, Outcome
from memmq.persist.names import file_name
from memmq.persist.record import encode_topic, line
from memmq.persist.replay import read_lines, read_merged
from memmq.stats import Persistence

__all__ = ["Persister", "BATCH_BYTES", "MAX_PENDING_BYTES", "DEFAULT_FLUSH_INTERVAL"]

_log = Logger()

BATCH_BYTES = 1024 * 1024
MAX_PENDING_BYTES = 64 * 1024 * 1024
_TOPIC_CACHE = 4096


class _Pending:
    """
    One topic's lines waiting for the next batch.
    """

    __slots__ = ("topic", "lines")

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.lines: list[bytes] = []


@implementer(IReplaySource)
class Persister(Service):
    """
    Appends every message to its topic's file in C{directory}.

    @ivar last_timestamp: the timestamp of the latest message accepted, of
        any topic, or of the latest L{seam}; every later message has a
        greater one.
    @ivar written: messages written; C{written_bytes}, their lines' bytes.
    @ivar errors: messages that could not be written.
    @ivar syncs: batches written and fsynced in durable mode.
    """

    name = "persist"

    def __init__(
        self,
        directory: str,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        sync: bool = False,
        reactor=None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.directory = os.path.abspath(directory)
        self.flush_interval = flush_interval
        self.sync = bool(sync)
        self.last_timestamp = 0
        self.written = 0
        self.written_bytes = 0
        self.errors = 0
        self.syncs = 0
        self.failing: dict[str, str] = {}  # path -> reason, while it fails
        self._reactor = reactor
        self._now = clock
        self._files = Files(self.directory)
        self._pool: ThreadPool | None = None
        self._ticker = LoopingCall(self._tick)
        self._ticker.clock = reactor
        self._topics: dict[str, tuple[str, bytes]] = {}
        self._pending: dict[str, _Pending] = {}
        self._pending_bytes = 0
        self._waiters: list[tuple[str | None, Deferred]] = []
        self._writing = False
        self._writing_waiters: list[tuple[str | None, Deferred]] = []
        self._soon = None
        self._stopped = False

    # -- the service ----------------------------------------------------

    def startService(self) -> None:
        super().startService()
        # Started here, not before: twistd forks after building the service
        # tree, and a thread does not survive that.
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="memmq-persist")
        self._pool.start()
        self._ticker.start(self.flush_interval, now=False)
        _log.info(
            "persisting every message to {directory} ({mode})",
            directory=self.directory,
            mode="durable: each publish answered once fsynced"
            if self.sync
            else f"written at least every {self.flush_interval:g} s",
        )

    def stopService(self):
        super().stopService()
        if self._ticker.running:
            self._ticker.stop()

        def finish(_=None) -> None:
            # The thread is idle now; what is left (publishes still coming
            # in while the front-end says goodbye) is written in place.
            if self._pool is not None:
                self._pool.stop()
                self._pool = None
            self._stopped = True
            self._flush()
            self._files.close_all(sync=True)

        return self.flushed().addBoth(finish)

    # -- accepting messages ---------------------------------------------

    def path(self, topic: str) -> str:
        """
        The file of C{topic}.
        """
        return os.path.join(self.directory, self._topic(topic)[0])

    def _topic(self, topic: str) -> tuple[str, bytes]:
        known = self._topics.get(topic)
        if known is None:
            if len(self._topics) >= _TOPIC_CACHE:
                self._topics.clear()
            known = self._topics[topic] = (file_name(topic), encode_topic(topic))
        return known

    def stamp(self) -> int:
        """
        The timestamp of the next message, taken now (see L{append}).
        """
        timestamp = self._now()
        if timestamp <= self.last_timestamp:
            timestamp = self.last_timestamp + 1
        self.last_timestamp = timestamp
        return timestamp

    def append(self, topic: str, payload: bytes, timestamp: int | None = None) -> Deferred[None] | None:
        """
        Accept one message of C{topic} (a checked topic), stamped
        C{timestamp} (from L{stamp}, in this reactor turn), or now.

        @return: L{None} when the caller need not wait (the default mode,
            with room in memory); otherwise a Deferred that fires once the
            message is written (and, in durable mode, fsynced), or fails
            with L{PersistError}.
        """
        if timestamp is None:
            timestamp = self.stamp()
        name, part = self._topic(topic)
        data = line(timestamp, part, payload)
        pending = self._pending.get(name)
        if pending is None:
            pending = self._pending[name] = _Pending(topic)
        pending.lines.append(data)
        self._pending_bytes += len(data)
        if self._stopped or self.sync or self._pending_bytes >= MAX_PENDING_BYTES:
            d: Deferred[None] = Deferred()
            self._waiters.append((name, d))
            if self._stopped:
                # Written in place: the writer thread is gone.
                self._flush()
            else:
                self._flush_soon()
            return d
        if self._pending_bytes >= BATCH_BYTES:
            self._flush_soon()
        return None

    def seam(self) -> int:
        """
        A timestamp that every message accepted so far has, or is older
        than, and that every later message will be younger than: where a
        replay ends and live delivery begins.  Not simply the last message's
        stamp: in a process that has published nothing yet, the files hold
        only earlier runs' messages, and all of those belong to the replay.
        """
        now = self._now()
        if now > self.last_timestamp:
            self.last_timestamp = now
        return self.last_timestamp

    def flushed(self) -> Deferred[None]:
        """
        A Deferred that fires once every message accepted so far has been
        written (or has failed to be); asks for a write now.
        """
        d: Deferred[None] = Deferred()
        if self._pending:
            self._waiters.append((None, d))
            self._flush_soon()
        elif self._writing:
            self._writing_waiters.append((None, d))
        else:
            d.callback(None)
        return d

    # -- writing ----------------------------------------------------------

    def _flush_soon(self) -> None:
        # Once per reactor turn: every publish read in this turn joins the
        # same batch.
        if self._soon is None and not self._writing:
            self._soon = self._reactor.callLater(0, self._flush)

    def _tick(self) -> None:
        try:
            self._flush()
        except Exception:
            _log.failure("persistence flush failed")

    def _flush(self) -> None:
        if self._soon is not None:
            if self._soon.active():
                self._soon.cancel()
            self._soon = None
        if self._writing or not self._pending:
            return
        pending, self._pending = self._pending, {}
        self._pending_bytes = 0
        self._writing_waiters, self._waiters = self._waiters, []
        batch = {name: b"".join(p.lines) for name, p in pending.items()}
        self._writing = True
        if self._pool is None:
            # Stopped (or never started): the shutdown's last writes.
            try:
                outcomes = self._files.write(batch, self.sync)
            except Exception:
                self._written(Failure(), pending)
            else:
                self._written(outcomes, pending)
            return
        deferToThreadPool(self._reactor, self._pool, self._files.write, batch, self.sync).addBoth(
            self._written, pending
        )

    def _written(self, outcomes: dict[str, Outcome] | Failure, pending: dict[str, _Pending]) -> None:
        self._writing = False
        waiters, self._writing_waiters = self._writing_waiters, []
        if isinstance(outcomes, Failure):
            _log.failure("persistence writer failed", outcomes)
            reason = outcomes.getErrorMessage()
            outcomes = {name: Outcome(os.path.join(self.directory, name), reason) for name in pending}
        for name, outcome in outcomes.items():
            entry = pending[name]
            count = len(entry.lines)
            if outcome.error is None:
                self.written += count
                self.written_bytes += sum(len(data) for data in entry.lines)
                if self.failing.pop(outcome.path, None) is not None:
                    _log.info("persistence: writing {path} again", path=outcome.path)
            else:
                self.errors += count
                if outcome.path not in self.failing:
                    self.failing[outcome.path] = outcome.error
                    _log.error(
                        "persistence: cannot write {path} ({reason}); messages of {topic!r} are not "
                        "persisted while this lasts (logged once per file)",
                        path=outcome.path,
                        reason=outcome.error,
                        topic=entry.topic,
                    )
        if self.sync:
            self.syncs += 1
        for name, d in waiters:
            outcome = outcomes.get(name) if name is not None else None
            if outcome is not None and outcome.error is not None:
                d.errback(PersistError(f"not persisted: cannot write {outcome.path}: {outcome.error}"))
            else:
                d.callback(None)
        if self._pending and (self.sync or self._waiters or self._stopped):
            self._flush()
        elif self._pending_bytes >= BATCH_BYTES:
            self._flush_soon()

    def figures(self) -> Persistence:
        """
        What C{/stats} and C{/metrics} show of the writer.
        """
        return Persistence(
            directory=self.directory,
            sync=self.sync,
            written=self.written,
            written_bytes=self.written_bytes,
            errors=self.errors,
            syncs=self.syncs,
            failing=tuple(self.failing.items()),
        )

    # -- reading back -----------------------------------------------------

    def settle(self, subject) -> Deferred[int]:
        """
        Take the seam now (L{seam}) and fire with it once everything
        stamped up to it is written: where a replay of C{subject} (a topic
        or a pattern: one writer stamps them all) ends.
        """
        last = self.seam()
        return self.flushed().addCallback(lambda _: last)

    def read_pattern(self, pattern, since: int, last: int, reader) -> Deferred:
        """
        Read the next part of a pattern's replay, in a thread of the
        reactor's pool; see L{memmq.persist.replay.read_merged}.
        """
        return deferToThreadPool(
            self._reactor, self._reactor.getThreadPool(), read_merged, self.directory, pattern, since, last, reader
        )

    def read(self, topic: str, since: int, last: int, offset: int, bound: int | None) -> Deferred:
        """
        Read the next part of C{topic}'s file for a replay, in a thread of
        the reactor's pool (not the writer's, which reads must not hold up);
        see L{memmq.persist.replay.read_chunk}.
        """
        return deferToThreadPool(
            self._reactor,
            self._reactor.getThreadPool(),
            read_lines,
            self.path(topic),
            topic,
            since,
            last,
            offset,
            bound,
        ).addCallback(self._count_skipped, topic)

    #: Lines of the topics' files skipped by replays: not records (torn by
    #: a crash, or corrupt).
    skipped_lines = 0

    def _count_skipped(self, result, topic: str):
        payloads, offset, bound, done, skipped = result
        if skipped:
            self.skipped_lines += skipped
            _log.warn(
                "replay of {topic!r} skipped {count} lines that are not messages ({total} in all)",
                topic=topic, count=skipped, total=self.skipped_lines,
            )
        return payloads, offset, bound, done
