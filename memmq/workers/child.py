# -*- test-case-name: tests.test_workers -*-
"""
A worker of a server run with C{--workers N}: C{python -m
memmq.workers.child}, started by the parent (L{memmq.workers.parent}) with
its description in C{$MEMMQ_WORKER}.

A worker is a server as C{memmq} runs one (the same options, the same
service tree) but for three things: it serves on the listening sockets the
parent passed down instead of opening its own; its broker is a
L{WorkerBroker} joined to the other workers by the mesh
(L{memmq.backplane.mesh}); and it tells the parent, not systemd, that it
serves, and beats on its status pipe so that the parent knows it is alive.
It dies with its parent.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.task import LoopingCall
from twisted.logger import LogLevel, globalLogBeginner
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from memmq.backplane.mesh import MeshBackplane
from memmq.eager import adopt_eager_tls, adopt_shared
from memmq.logs import observer
from memmq.server.listen import is_plain
from memmq.workers.figures import FiguresBroker, WorkerBroker

__all__ = ["Worker", "main"]

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """
    Ask the kernel to send this process SIGTERM when its parent dies (and
    make sure it has not died already).
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the status pipe's end tells the same, later
    if os.getppid() != parent:
        os._exit(0)


class _Status(Service):
    """
    Says "ready" on the status pipe once the worker serves, then beats.
    """

    name = "worker-status"

    def __init__(self, worker: Worker, reactor) -> None:
        self._worker = worker
        self._reactor = reactor
        self._beats: LoopingCall | None = None

    def _say(self, line: bytes) -> None:
        try:
            os.write(self._worker.status_fd, line + b"\n")
        except OSError:
            # The parent is gone: so are we.
            self._reactor.stop()

    def startService(self) -> None:
        super().startService()
        # Ready once the other workers' interest is known (or the mesh gave
        # up waiting): a message published here then reaches them.
        self._worker.synced.addCallback(lambda _: self._say(b"ready"))
        self._beats = LoopingCall(self._say, b"beat")
        self._beats.clock = self._reactor
        self._beats.start(self._worker.beat, now=False)

    def stopService(self):
        super().stopService()
        if self._beats is not None and self._beats.running:
            self._beats.stop()


@implementer(IReadDescriptor)
class _Parent:
    """
    The worker's standard input, a pipe from the parent: "listen" when the
    --address socket starts listening; its end when the parent is gone
    (on Linux the parent's death kills the worker first anyway).
    """

    def __init__(self, worker: Worker, reactor) -> None:
        self._worker = worker
        self._reactor = reactor

    def fileno(self) -> int:
        return 0

    def logPrefix(self) -> str:
        return "parent"

    def doRead(self):
        try:
            data = os.read(0, 4096)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if not data:
            return ConnectionDone()
        if b"listen" in data:
            self._worker.listen()
        return None

    def connectionLost(self, reason) -> None:
        self._reactor.removeReader(self)
        if self._reactor.running:
            self._reactor.stop()


class _Mesh(Service):
    """
    Joins the mesh first and leaves it last.
    """

    name = "mesh"

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.broker = worker.broker

    def startService(self) -> None:
        super().startService()
        self.broker.start().addBoth(self.worker.joined)

    def stopService(self):
        super().stopService()
        return self.broker.stop()


class Worker:
    """
    What makes a server a worker (L{memmq.tap.makeService} asks it).

    @param spec: the parent's description of this worker.
    """

    def __init__(self, spec: dict, reactor) -> None:
        self.spec = spec
        self.index: int = spec["index"]
        self.status_fd: int = spec["status_fd"]
        self.beat: float = spec["beat"]
        self._reactor = reactor
        self.broker: WorkerBroker | FiguresBroker | None = None
        self.site = None
        #: fires once the mesh knows what the other workers follow
        self.synced: Deferred[None] = Deferred()
        self._listening: bool = spec["listening"]
        # The ports that accept once the mesh is synced, and (the
        # --address socket's) once the parent's socket listens.
        self._held: list[tuple[object, bool]] = []
        os.set_blocking(0, False)
        reactor.addReader(_Parent(self, reactor))

    def listen(self) -> None:
        """
        The parent's socket listens now: accept on it.
        """
        self._listening = True
        self._release()

    def joined(self, result) -> None:
        """
        The mesh is synced: accept, and say so.
        """
        if not self.synced.called:
            self.synced.callback(None)
        self._release()

    def _release(self) -> None:
        if not self.synced.called:
            return
        held, self._held = self._held, []
        for port, needs_listen in held:
            if needs_listen and not self._listening:
                # Not listening yet: a socket in that state reads as hung
                # up, which would close the port.
                self._held.append((port, needs_listen))
            else:
                port.startReading()

    def wrap(self, broker, messages: bool = True):
        """
        The broker of this worker: over the local in-memory one, joined to
        the others by the mesh; or, when C{messages} is false (each worker
        a proxy, or a node of a Redis backplane, of its own), over
        C{broker} as it is, with the mesh carrying figures only.
        """
        mesh = MeshBackplane(self._reactor, self.index, self.spec["mesh"], self.spec["mesh_fd"])
        kind = WorkerBroker if messages else FiguresBroker
        self.broker = kind(broker, mesh, self.index, self._reactor)
        return self.broker

    def persist(self, persister):
        """
        The broker of this worker with C{--persist}, over L{wrap}'s, and
        where its replays come from (L{memmq.workers.persist}).
        """
        from memmq.workers.persist import OwnedPersistingBroker

        broker = OwnedPersistingBroker(self.broker, persister)
        return broker, broker.replay

    def services(self, root) -> None:
        """
        Add what comes first in a worker's tree: the mesh.
        """
        _Mesh(self).setServiceParent(root)

    def adopt(self, http) -> None:
        """
        Have the HTTP front-end serve on the parent's sockets (its
        C{ports} filled in before it starts, so that it opens none).
        """
        tls = http.certificate.options()
        site = self.site = http.site
        self.broker.site = site
        for entry in self.spec["ports"]:
            fd, family = entry["fd"], entry["family"]
            description = entry["description"]
            if description is None:
                port = adopt_eager_tls(self._reactor, fd, family, tls, site)
            else:
                factory = site if is_plain(description) else TLSMemoryBIOFactory(tls, False, site)
                port = adopt_shared(self._reactor, fd, family, factory)
            port.stopReading()
            self._held.append((port, entry["description"] is None))
            os.close(fd)
            http.adopt(port, entry["description"])

    def notifier(self) -> Service:
        """
        Last in the tree: tells the parent this worker serves.
        """
        return _Status(self, self._reactor)


def main() -> int:
    spec = json.loads(os.environ.pop("MEMMQ_WORKER"))
    die_with_parent(spec["parent"])
    from memmq.script import Options, serve

    options = Options()
    options.parseOptions(spec["argv"])
    globalLogBeginner.beginLoggingTo([observer(options["log_format"], LogLevel.info)], redirectStandardIO=False)
    from twisted.internet import reactor

    # The parent passes SIGHUP on; a feature that reloads on it installs
    # its own handler while the tree is built, over this one.
    signal.signal(signal.SIGHUP, lambda signum, frame: None)

    return serve(options, reactor, Worker(spec, reactor))


if __name__ == "__main__":
    sys.exit(main())
