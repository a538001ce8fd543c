"""
The interactive prompt, C{memmq -i --topic=T}: each line typed is published
to the topic, messages that arrive are printed above the prompt, and the
user's own messages are not echoed back.

Two threads, each with one job.  The reactor runs in the main thread and
alone touches the client.  prompt_toolkit runs its own asyncio loop in a
second thread, because its prompt blocks on the terminal.  They cross in
few places: a typed line goes to the reactor with C{callFromThread}; a
message to print goes to the prompt's loop with C{call_soon_threadsafe};
the end of the session goes back with C{callFromThread}.  The prompt's
message reads only a string the reactor thread keeps up to date.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from prompt_toolkit import PromptSession, print_formatted_text
from prompt_toolkit.application import Application, create_app_session
from prompt_toolkit.input import Input
from prompt_toolkit.output import Output
from prompt_toolkit.patch_stdout import patch_stdout
from twisted.internet import error, threads
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from memmq.cli import client_from_options
from memmq.client import Client
from memmq.client.core import Subscription
from memmq.client.reasons import reason_of
from memmq.errors import PublishError
from memmq.logs import say

__all__ = ["Prompt", "run"]

_log = Logger()

# How often the prompt's connection state is looked at again: the
# subscription has no event for a connection coming or going.
_STATE_INTERVAL = 0.5
# At the end, how long publishes still on their way are waited for, so that
# `echo hello | memmq -i` publishes its line before leaving.
_FLUSH_TIMEOUT = 10.0
# A payload is shown as text: control characters (escape sequences, a
# carriage return, a bell) would act on the terminal, so they are shown as
# "?" as prompt_toolkit shows an escape; newlines and tabs stay.
_CONTROLS = {c: "?" for c in [*range(0x20), *range(0x7F, 0xA0)] if chr(c) not in "\t\n"}


class Prompt:
    """
    An interactive session on one topic of C{client}.

    @param input: where keys come from (prompt_toolkit's L{Input}); the
        terminal when L{None}.
    @param output: where the prompt is drawn; the terminal when L{None}.
    @param printer: called on the reactor thread with the text of each
        message to show; by default it is printed above the prompt.  Tests
        pass their own to see messages without terminal escapes.
    """

    def __init__(
        self,
        client: Client,
        topic: str,
        reactor,
        input: Input | None = None,
        output: Output | None = None,
        printer: Callable[[str], Any] | None = None,
        pattern: str | None = None,
        group: str | None = None,
    ) -> None:
        self.client = client
        self.topic = topic
        self.pattern = pattern
        self.group = group
        self._reactor = reactor
        self._input = input
        self._output = output
        self._printer = printer if printer is not None else self._print_above
        self.subscription: Subscription | None = None
        # Payloads this session published and has not yet seen come back,
        # each counted once per server it went to (with the All selector a
        # message comes back from every server).  A counter and not a time
        # window: the same text from someone else is still shown.
        self._unseen: Counter[bytes] = Counter()
        self._in_flight: set[Deferred[None]] = set()
        self._state = "connecting"
        self._watch = LoopingCall(self._refresh_state)
        self._watch.clock = reactor
        self._subscribing: Deferred | None = None
        self._stop_requested = threading.Event()
        self._thread: threading.Thread | None = None
        self._done: Deferred[int] | None = None
        self._status: int | None = None
        self._end_waiters: list[Deferred[None]] = []
        # Set by the prompt thread once its loop runs (read on the reactor
        # thread; None again once the loop is gone).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._context: contextvars.Context | None = None
        self._app: Application | None = None
        # Messages that arrive before the prompt is up wait for it.
        self._early: list[str] = []
        self._up = False
        self._ending = False
        # The prompt thread's own: lines waiting to be printed together.
        self._pending: list[str] = []
        self.ready: Deferred[None] = Deferred()

    # -- the reactor thread ----------------------------------------------

    def start(self) -> Deferred[int]:
        """
        Subscribe, then show the prompt.

        @return: fires with the exit status (0) when the session ends (end
            of input, Ctrl-D, Ctrl-C or L{stop}); fails if the subscription
            cannot be opened.  C{ready} fires once the prompt is up.
        """
        self._done = Deferred()
        if self.pattern is None and self.group is None:
            self._subscribing = self.client.subscribe(self.topic, self._received)
        else:
            self._subscribing = self.client.subscribe(
                None if self.pattern else self.topic, self._received_message, pattern=self.pattern,
                group=self.group, as_message=True,
            )
        self._subscribing.addCallbacks(self._subscribed, self._not_subscribed)
        return self._done

    def stop(self) -> Deferred[None]:
        """
        End the session as the end of input would; fires once it has ended.
        """
        if self._status is not None or self._done is None:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._end_waiters.append(waiter)
        self._stop_requested.set()
        if self._subscribing is not None:
            self._subscribing.cancel()
        else:
            self._in_loop(self._exit_app)
        return waiter

    def message(self) -> str:
        """
        The prompt: the topic and the state of the subscription's
        connections.  Called on the prompt thread; reads only a string.
        """
        return f"{self.topic} ({self._state})> "

    def _subscribed(self, subscription: Subscription) -> None:
        self._subscribing = None
        self.subscription = subscription
        self._refresh_state()
        if self._stop_requested.is_set():
            self._ended(0)
            return
        self._watch.start(_STATE_INTERVAL, now=False).addErrback(
            lambda f: _log.failure("the prompt's state stopped updating", f)
        )
        self._thread = threading.Thread(target=self._run_thread, name="memmq-prompt", daemon=True)
        self._thread.start()

    def _not_subscribed(self, failure: Failure) -> None:
        self._subscribing = None
        if self._stop_requested.is_set():  # cancelled by stop()
            self._finish(0)
        else:
            self._finish(failure)

    def _refresh_state(self) -> None:
        subscription = self.subscription
        if subscription is None:
            state = "connecting"
        else:
            servers, connected = len(subscription.servers), subscription.connected
            if servers and connected == servers:
                state = "connected"
            elif connected == 0:
                state = "disconnected"
            else:
                state = f"connected to {connected} of {servers}"
        if state != self._state:
            self._state = state
            app = self._app
            if app is not None:
                app.invalidate()  # thread-safe: schedules a redraw on the app's loop

    def _publish(self, line: str) -> None:
        if self._ending or self.subscription is None:
            return
        payload = line.encode("utf-8", "replace")
        copies = max(1, len(self.subscription.servers))
        self._unseen[payload] += copies
        d = self.client.publish(self.topic, payload)
        self._in_flight.add(d)

        def failed(failure: Failure) -> None:
            # What did not reach a server will not come back from it.
            lost = len(failure.value.failures) if failure.check(PublishError) else copies
            self._forget(payload, lost)
            self._show(f"! publish failed: {_why(failure)}")

        def finished(result):
            self._in_flight.discard(d)
            return result

        d.addErrback(failed).addBoth(finished)

    def _forget(self, payload: bytes, count: int) -> None:
        left = self._unseen[payload] - count
        if left > 0:
            self._unseen[payload] = left
        else:
            del self._unseen[payload]

    def _received(self, payload: bytes) -> None:
        if self._unseen[payload] > 0:
            self._forget(payload, 1)
            return
        self._show(payload.decode("utf-8", "replace").translate(_CONTROLS))

    def _received_message(self, message) -> None:
        """
        A message of a pattern or group subscription: shown with its topic
        when it is not the prompt's own.
        """
        if message.topic == self.topic:
            self._received(message.payload)
        else:
            text = f"{message.topic}: {message.payload.decode('utf-8', 'replace')}"
            self._show(text.translate(_CONTROLS))

    def _show(self, text: str) -> None:
        try:
            self._printer(text)
        except Exception:
            _log.failure("cannot show a message")

    def _ended(self, status: int | Failure) -> None:
        """
        The prompt thread is done (or never started): let the last
        publishes go, close the subscription, then fire C{start}'s Deferred.
        """
        self._ending = True
        self._loop = None
        self._app = None
        self._early = []
        if self._watch.running:
            self._watch.stop()
        flushing = DeferredList(list(self._in_flight), consumeErrors=True)
        flushing.addTimeout(_FLUSH_TIMEOUT, self._reactor)
        flushing.addErrback(lambda f: None)

        def close(_):
            if self.subscription is not None:
                return self.subscription.close()

        def join(_):
            if self._thread is not None:
                return threads.deferToThread(self._thread.join)

        flushing.addCallback(close).addCallback(join)
        flushing.addErrback(lambda f: _log.failure("closing the prompt", f))
        flushing.addCallback(lambda _: self._finish(status))

    def _finish(self, status: int | Failure) -> None:
        self._status = 1 if isinstance(status, Failure) else status
        waiters, self._end_waiters = self._end_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        if self._done is not None and not self._done.called:
            if isinstance(status, Failure):
                self._done.errback(status)
            else:
                self._done.callback(status)

    # -- crossing to the prompt thread -----------------------------------

    def _in_loop(self, function: Callable[..., Any], *args: Any) -> bool:
        """
        Call C{function} on the prompt's loop, in its prompt_toolkit
        context (so that it finds the running application); False if the
        loop is gone.
        """
        loop, context = self._loop, self._context
        if loop is None or context is None:
            return False
        try:
            loop.call_soon_threadsafe(function, *args, context=context.copy())
        except RuntimeError:  # the loop closed meanwhile
            return False
        return True

    def _print_above(self, text: str) -> None:
        if self._ending:
            return
        if not self._up:
            self._early.append(text)
        else:
            self._in_loop(self._print_in_loop, text)

    # -- the prompt thread -----------------------------------------------

    def _run_thread(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException:
            status: int | Failure = Failure()
        else:
            status = 0
        self._reactor.callFromThread(self._ended, status)

    def _app_session(self):
        # With neither given, use the process's own session: then
        # patch_stdout (which run() uses) sees the application and prints
        # what is written to sys.stdout and sys.stderr above it too.
        if self._input is None and self._output is None:
            return contextlib.nullcontext()
        return create_app_session(input=self._input, output=self._output)

    async def _main(self) -> None:
        with self._app_session():
            session: PromptSession[str] = PromptSession(self.message, input=self._input, output=self._output)
            self._context = contextvars.copy_context()
            self._app = session.app
            self._loop = asyncio.get_running_loop()
            self._reactor.callFromThread(self._prompt_is_up)
            while not self._stop_requested.is_set():
                try:
                    line = await session.prompt_async()
                except (EOFError, KeyboardInterrupt):
                    break
                if line:
                    self._reactor.callFromThread(self._publish, line)
            self._flush_pending()

    def _prompt_is_up(self) -> None:
        self._up = True
        early, self._early = self._early, []
        for text in early:
            self._print_above(text)
        if not self.ready.called:
            self.ready.callback(None)

    def _exit_app(self) -> None:
        # The loop checks _stop_requested before each prompt, so only a
        # prompt now waiting for keys needs ending.
        app = self._app
        if app is not None and app.is_running and app.future is not None and not app.future.done():
            app.exit(exception=EOFError)

    def _print_in_loop(self, text: str) -> None:
        # Lines that arrive together are printed together: one erase and
        # redraw of the prompt for a burst, not one per line.
        self._pending.append(text)
        if len(self._pending) == 1:
            asyncio.get_running_loop().call_soon(self._flush_pending)

    def _flush_pending(self) -> None:
        lines, self._pending = self._pending, []
        app = self._app
        if lines and app is not None:
            print_formatted_text("\n".join(lines), output=app.output)


def _why(failure: Failure) -> str:
    error = failure.value
    if isinstance(error, PublishError):
        return "; ".join(f"{server}: {why}" for server, why in error.failures.items())
    return reason_of(failure)


def run(options, reactor) -> int:
    """
    Run the prompt the options ask for; return the exit status: 0 when the
    user leaves (Ctrl-D, Ctrl-C, end of input, SIGTERM), 1 if the topic
    cannot be subscribed to.
    """
    client = client_from_options(options, reactor)
    prompt = Prompt(client, options["topic"], reactor, pattern=options["pattern"], group=options["group"])
    status = [0]

    def stop_reactor() -> None:
        try:
            reactor.stop()
        except error.ReactorNotRunning:
            pass  # already stopping: SIGTERM

    def ended(code: int) -> None:
        status[0] = code
        stop_reactor()

    def failed(failure: Failure) -> None:
        say(_why(failure))
        status[0] = 1
        stop_reactor()

    def closing() -> Deferred:
        d = prompt.stop()
        d.addCallback(lambda _: client.close())
        return d.addTimeout(_FLUSH_TIMEOUT + 5, reactor).addErrback(lambda f: None)

    reactor.addSystemEventTrigger("before", "shutdown", closing)
    reactor.callWhenRunning(lambda: prompt.start().addCallbacks(ended, failed))
    with patch_stdout():
        reactor.run()
    return status[0]
