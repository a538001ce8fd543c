"""
Pins the private Twisted behaviour start-up relies on (listed at the top of
memmq.internals.twisted_private): twistd re-raises the signal that stopped
the reactor, read from C{reactor._exitSignal}, and clearing it makes the
process exit 0.
"""

from __future__ import annotations

import signal

from twisted.application.app import ApplicationRunner
from twisted.internet.base import ReactorBase
from twisted.internet.interfaces import _ISupportsExitSignalCapturing
from twisted.trial.unittest import SynchronousTestCase

from memmq.internals.twisted_private import clear_exit_signal


class _Reactor:
    """
    The part of a reactor that a SIGTERM handler and twistd's runner touch.
    """

    _exitSignal = None

    def __init__(self) -> None:
        self.calls: list = []

    def callFromThread(self, f, *args) -> None:
        self.calls.append(f)

    def stop(self) -> None:
        pass


class ExitSignalTests(SynchronousTestCase):
    def test_sigterm_records_the_signal(self) -> None:
        """
        The reactor's SIGTERM handler stops the reactor and records the
        signal as C{_exitSignal}, which starts as None.
        """
        self.assertIsNone(ReactorBase._exitSignal)
        reactor = _Reactor()
        ReactorBase.sigTerm(reactor, signal.SIGTERM, None)
        self.assertEqual(reactor._exitSignal, signal.SIGTERM)
        self.assertEqual(reactor.calls, [reactor.stop])

    def test_twistd_reads_it(self) -> None:
        """
        twistd's runner reads C{_exitSignal} from a reactor that says it
        captures exit signals, after the reactor has run.
        """
        self.assertIn("_exitSignal", _ISupportsExitSignalCapturing.names())
        source = ApplicationRunner.startReactor.__code__.co_names
        self.assertIn("_exitSignal", source)

    def test_clear(self) -> None:
        """
        L{clear_exit_signal} forgets a recorded signal and leaves a reactor
        without one alone.
        """
        reactor = _Reactor()
        reactor._exitSignal = signal.SIGTERM
        clear_exit_signal(reactor)
        self.assertIsNone(reactor._exitSignal)
        bare = object()
        clear_exit_signal(bare)
        self.assertFalse(hasattr(bare, "_exitSignal"))
