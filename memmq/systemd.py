"""
systemd's notification protocol (sd_notify), which is small enough to
speak directly: one datagram to the AF_UNIX socket named by
C{$NOTIFY_SOCKET} (a leading C{@} means the abstract namespace).

L{NotifyService} says C{READY=1} once the services before it have started
(the server listens), C{STOPPING=1} when stopping begins, and C{WATCHDOG=1}
every half C{$WATCHDOG_USEC} when systemd asks for a watchdog.  Without
C{$NOTIFY_SOCKET} it does nothing.
"""

from __future__ import annotations

import os
import socket

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

__all__ = ["NotifyService", "notify", "watchdog_interval"]

_log = Logger()


def notify(message: str, environ=os.environ) -> bool:
    """
    Send C{message} (e.g. C{"READY=1"}) to systemd; return whether there
    was a socket to send it to.  A failure is logged, never raised: the
    service works the same without systemd.
    """
    address = environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode("utf-8"))
    except OSError as e:
        _log.warn("cannot notify systemd ({message}): {reason}", message=message, reason=e.strerror or e)
        return False
    return True


def watchdog_interval(environ=os.environ) -> float | None:
    """
    How often to send WATCHDOG=1 (half of C{$WATCHDOG_USEC}, in seconds),
    or L{None} when systemd watches no process, or another one.
    """
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1e6 / 2


class NotifyService(Service):
    """
    Tells systemd (C{Type=notify}) when memmq is ready and when it stops,
    and feeds its watchdog.
    """

    name = "systemd-notify"

    def __init__(self, reactor, environ=os.environ) -> None:
        self._reactor = reactor
        self._environ = environ
        self._watchdog: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        if not notify("READY=1\nSTATUS=serving", self._environ):
            return
        interval = watchdog_interval(self._environ)
        if interval is not None:
            self._watchdog = LoopingCall(notify, "WATCHDOG=1", self._environ)
            self._watchdog.clock = self._reactor
            self._watchdog.start(interval, now=True)

    def stopService(self):
        super().stopService()
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        notify("STOPPING=1", self._environ)
