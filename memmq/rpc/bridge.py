"""
The one place memmq crosses threads: an asyncio loop (for C{grpc.aio}) in a
thread of its own beside the reactor, and the calls that go between them.

The reactor thread alone touches the broker; gRPC's calls run on the loop.
A crossing is a call queued for the other side; calls queued while the
other side has not yet run the last batch ride along with it, so a burst of
messages costs one wake-up, not one per message.  Calls made from one side
run on the other in the order they were made.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["Batches", "LoopThread"]

_log = Logger()


class Batches:
    """
    Calls queued from any thread, run in batches by C{schedule} (a
    thread-safe "run this on the other side soon": C{callFromThread} or
    C{call_soon_threadsafe}).
    """

    def __init__(self, schedule: Callable[[Callable[[], None]], object]) -> None:
        self._schedule = schedule
        self._lock = threading.Lock()
        self._calls: list[tuple[Callable[..., object], tuple]] = []

    def call(self, f: Callable[..., object], *args: Any) -> None:
        with self._lock:
            self._calls.append((f, args))
            first = len(self._calls) == 1
        if first:
            self._schedule(self._run)

    def _run(self) -> None:
        with self._lock:
            calls, self._calls = self._calls, []
        for f, args in calls:
            try:
                f(*args)
            except Exception:
                _log.failure("a call across threads failed")


class LoopThread:
    """
    An asyncio event loop running in a daemon thread, bridged to a reactor.

    @ivar loop: the loop, once started.
    """

    def __init__(self, reactor, name: str) -> None:
        self._reactor = reactor
        self._name = name
        self._thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.to_reactor = Batches(reactor.callFromThread)
        self.to_loop: Batches | None = None
        self._stopped: Deferred[None] | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """
        Start the thread and its loop; return once the loop runs.
        """
        if self._thread is not None:
            return
        loop = self.loop = asyncio.new_event_loop()
        self.to_loop = Batches(loop.call_soon_threadsafe)
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(loop, ready), name=self._name, daemon=True)
        self._thread.start()
        ready.wait(10)

    def _run(self, loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
            # What stop left pending (cancelled calls' clean-ups) may end.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.wait(pending, timeout=1))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            # The loop is stopped but not closed: gRPC's process-wide poller
            # may still hand it a late completion (of a call cancelled at
            # stop), which a closed loop answers with an error.
            self.to_reactor.call(self._ended)

    def _ended(self) -> None:
        if self._thread is not None:
            self._thread.join(1)
        if self._stopped is not None and not self._stopped.called:
            self._stopped.callback(None)

    def run(self, f: Callable[..., Awaitable[Any]], *args: Any) -> Deferred:
        """
        From the reactor: run the coroutine function C{f(*args)} on the loop;
        the Deferred fires on the reactor with its result.  Cancelling the
        Deferred cancels the coroutine.
        """
        task: list[asyncio.Task] = []

        def cancel(d: Deferred) -> None:
            if self.to_loop is not None:
                self.to_loop.call(lambda: task and task[0].cancel())

        d: Deferred = Deferred(cancel)

        def done(t: asyncio.Task) -> None:
            if t.cancelled():
                result: Any = Failure(asyncio.CancelledError())
            elif t.exception() is not None:
                e = t.exception()
                result = Failure(e, type(e), e.__traceback__)
            else:
                result = t.result()
            self.to_reactor.call(_fire, d, result)

        def begin() -> None:
            t = self.loop.create_task(f(*args))
            task.append(t)
            t.add_done_callback(done)

        if self.to_loop is None or not self.running:
            from memmq.errors import MemmqError

            return Deferred.fromFailure(Failure(MemmqError("gRPC thread is not running")))
        self.to_loop.call(begin)
        return d

    def in_reactor(self, f: Callable[..., Any], *args: Any) -> asyncio.Future:
        """
        From the loop: call C{f(*args)} on the reactor (it may return a
        Deferred); the future resolves on the loop with its result.
        """
        future = self.loop.create_future()

        def settle(result: Any) -> None:
            if future.done():
                return
            if isinstance(result, Failure):
                future.set_exception(result.value)
            else:
                future.set_result(result)

        def call() -> None:
            maybeDeferred(f, *args).addBoth(lambda result: self.to_loop.call(settle, result))

        self.to_reactor.call(call)
        return future

    def stop(self, last: Callable[[], Awaitable[None]] | None = None) -> Deferred[None]:
        """
        Run C{last} on the loop (if given), then stop the loop; the Deferred
        fires on the reactor once the thread has ended.
        """
        if self._stopped is not None:
            return self._stopped
        self._stopped = Deferred()
        if not self.running:
            self._stopped.callback(None)
            return self._stopped

        async def finish() -> None:
            try:
                if last is not None:
                    await last()
            except Exception:
                _log.failure("stopping the gRPC thread")
            finally:
                self.loop.stop()

        self.to_loop.call(lambda: self.loop.create_task(finish()))
        return self._stopped


def _fire(d: Deferred, result: Any) -> None:
    if d.called:
        return
    if isinstance(result, Failure):
        d.errback(result)
    else:
        d.callback(result)
