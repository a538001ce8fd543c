"""
Tests for memmq.systemd: READY=1, STOPPING=1 and the watchdog, received on
a real datagram socket, from a real memmq process and in-process.
"""

from __future__ import annotations

import os
import sys

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from memmq.systemd import NotifyService, notify
from tests.support import NotifySocket, ServerProcess, child_env, short_directory, spawn, until


class NotifyTests(SynchronousTestCase):
    def test_no_socket(self) -> None:
        """
        Without NOTIFY_SOCKET nothing is sent and nothing fails.
        """
        self.assertFalse(notify("READY=1", {}))

    def test_path_and_abstract(self) -> None:
        """
        A message reaches a socket named by a path, or by @name (abstract).
        """
        for abstract in (False, True):
            target = NotifySocket(self, abstract)
            self.assertTrue(notify("READY=1", {"NOTIFY_SOCKET": target.address}))
            self.assertEqual(target.read(), ["READY=1"])

    def test_gone_socket(self) -> None:
        """
        A socket that is not there is logged, not raised.
        """
        self.assertFalse(notify("READY=1", {"NOTIFY_SOCKET": os.path.join(short_directory(self), "gone")}))
        self.flushLoggedErrors()

    def test_service_and_watchdog(self) -> None:
        """
        The service says READY=1 when started, WATCHDOG=1 every half
        WATCHDOG_USEC, and STOPPING=1 when stopped.
        """
        target = NotifySocket(self)
        clock = Clock()
        service = NotifyService(clock, {"NOTIFY_SOCKET": target.address, "WATCHDOG_USEC": "2000000"})
        service.startService()
        self.assertEqual(target.read(), ["READY=1\nSTATUS=serving", "WATCHDOG=1"])
        clock.advance(1.0)
        clock.advance(1.0)
        self.assertEqual(target.read()[2:], ["WATCHDOG=1", "WATCHDOG=1"])
        service.stopService()
        clock.advance(5.0)
        self.assertEqual(target.read()[4:], ["STOPPING=1"])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_watchdog_for_another_process(self) -> None:
        """
        WATCHDOG_PID naming another process means no watchdog here.
        """
        target = NotifySocket(self)
        clock = Clock()
        environ = {"NOTIFY_SOCKET": target.address, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}
        NotifyService(clock, environ).startService()
        self.assertEqual(target.read(), ["READY=1\nSTATUS=serving"])
        self.assertEqual(clock.getDelayedCalls(), [])


class ProcessNotifyTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_ready_and_stopping(self) -> None:
        """
        A real memmq process says READY=1 once it listens and STOPPING=1
        when SIGTERM stops it.
        """
        target = NotifySocket(self)
        server = ServerProcess()
        env = dict(child_env(), NOTIFY_SOCKET=target.address)
        spawn(self, server, [sys.executable, "-m", "memmq", "--address=127.0.0.1:0"], env=env)
        yield server.wait_listening()
        yield until(lambda: "READY=1\nSTATUS=serving" in target.read())
        self.assertEqual((yield server.terminate()), 0)
        self.assertEqual(target.read(), ["READY=1\nSTATUS=serving", "STOPPING=1"])
