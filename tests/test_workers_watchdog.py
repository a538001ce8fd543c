"""
systemd's watchdog over a server run with C{--workers} (README: Workers,
systemd): the parent feeds it only while every worker beats, so a hung
worker stops the feeding until the parent has killed and restarted it.
"""

from __future__ import annotations

import os
import re
import signal
import sys

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from memmq.workers.parent import HANG_LIMIT, WorkersService, _Worker
from tests.support import START, CertificateFiles, NotifySocket, ServerProcess, child_env, sleep, spawn, until


class WatchdogTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_hung_worker_stops_the_feeding(self):
        """
        With WATCHDOG_USEC set, WATCHDOG=1 comes while both workers beat;
        none comes while one is stopped (SIGSTOP), and the parent says
        which worker it stopped feeding for; the parent kills the
        silent worker after its hang limit, restarts it, and the feeding
        starts again.
        """
        notifications = NotifySocket(self)
        files = CertificateFiles(self)
        process = ServerProcess()
        env = dict(child_env(), NOTIFY_SOCKET=notifications.address, WATCHDOG_USEC="1000000")
        spawn(self, process, [
            sys.executable, "-m", "memmq", "--address=127.0.0.1:0", "--workers=2",
            f"--cert_file={files.cert_file}", f"--key_file={files.key_file}",
        ], env=env)
        yield process.wait_listening()
        yield until(lambda: b"memmq serving with 2 workers" in process.output)
        pids = [int(p) for p in re.search(rb"\(pids (\d+) (\d+)\)", process.output).groups()]
        yield until(lambda: notifications.feeds() >= 2)
        self.assertTrue(any(m.startswith("READY=1") for m in notifications.received))

        os.kill(pids[0], signal.SIGSTOP)
        self.addCleanup(lambda: _continue(pids[0]))
        # A beat may be two seconds late before the worker counts as
        # silent; the parent says when it stops feeding (every feed it
        # sent before is in the socket by then), and feeds no more until
        # it has killed the worker, at its hang limit, well after this.
        stopped = b"memmq worker 0 (pid %d) has not beaten for" % pids[0]
        yield until(lambda: stopped in process.output, HANG_LIMIT)
        self.assertIn(b"not feeding systemd's watchdog", process.output)
        before = notifications.feeds()
        yield sleep(2.0)
        self.assertEqual(notifications.feeds(), before, "fed while a worker was stopped")
        self.assertNotIn(b"silent for", process.output)

        yield until(lambda: b"silent for" in process.output, HANG_LIMIT + 20)
        yield until(lambda: b"worker 0 (pid %d) died" % pids[0] in process.output, 20)
        yield until(lambda: notifications.feeds() > before, 30)
        yield until(lambda: b"serving again" in process.output, START)


def _continue(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


class WallClockTests(TestCase):
    def test_wall_clock_step(self):
        """
        A step of the wall clock (the reactor's time) does not make a
        worker that beats look silent; one silent past HANG_LIMIT on the
        monotonic clock is killed.
        """
        clock = Clock()
        service = WorkersService({"workers": 1}, [], None, clock)
        worker = _Worker(service, 0)
        worker.ready = True
        killed = []
        worker.signal = killed.append
        service.workers[0] = worker
        clock.advance(HANG_LIMIT * 100)
        service._check_hangs()
        self.assertEqual(killed, [])
        worker.beat -= HANG_LIMIT + 1
        service._check_hangs()
        self.assertEqual(killed, ["KILL"])
