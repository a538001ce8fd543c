# -*- test-case-name: tests.test_workers -*-
"""
The parent of a server run with C{--workers N}: it holds every listening
socket and N worker processes serve on them; it does no message work.

At start it listens where the server was told to (C{--address}, every
C{--listen}, systemd's sockets), stops accepting on those sockets itself,
makes one Unix socket per worker for the mesh between them
(L{memmq.backplane.mesh}), and starts the workers with all of them passed
down.  It says the server listens, and tells systemd C{READY=1}, once every
worker has said it serves.

It supervises: a worker that dies is started again, after a delay that
doubles while it keeps dying (up to L{MAX_BACKOFF}), and the other workers
serve on meanwhile; a worker that stops answering (no heartbeat for
L{HANG_LIMIT} seconds) is killed and restarted; systemd's watchdog is fed
only while every worker beats.  SIGTERM or SIGINT stops every worker
gracefully (each says goodbye to its clients, WebSocket 1001) and then the
parent; SIGHUP is passed on to every worker.  The workers die with the
parent (L{memmq.workers.child}).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from memmq.eager import adopt_eager_tls
from memmq.server.listen import Address, announce_listening, bind, listen_endpoint
from memmq.systemd import notify, watchdog_interval

__all__ = ["WorkersService", "HANG_LIMIT", "MAX_BACKOFF"]

_log = Logger()

# A worker that dies again within this many seconds of its start doubles
# its next delay; one that lived longer starts again from the first.
FIRST_BACKOFF = 0.1
MAX_BACKOFF = 5.0
STEADY = 10.0
# A worker silent this long is hung: killed and restarted.
HANG_LIMIT = 10.0
# How often a worker beats (L{memmq.workers.child}).
BEAT = 0.5
# How long a stopping worker has before it is killed.
STOP_LIMIT = 3.0

# The --address socket's backlog (Twisted's default).
BACKLOG = 50

# The first file descriptor the sockets are passed on (after stdin, stdout,
# stderr and the worker's status pipe).
_STATUS_FD = 3
_FIRST_FD = 4


class _Refuse(Protocol):
    """
    Never used: the parent does not accept (its ports stop reading at
    once); a listening port needs a factory all the same.
    """

    def connectionMade(self) -> None:
        self.transport.abortConnection()


class _Worker(ProcessProtocol):
    """
    One worker process: its status pipe, its end.
    """

    # Its start and its last beat are on the monotonic clock: a step of
    # the wall clock must not make every worker look silent (or young).

    def __init__(self, supervisor: WorkersService, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.pid: int | None = None
        self.ready = False
        self.started = time.monotonic()
        self.beat = self.started
        self.ended: Deferred = Deferred()
        self._status = b""

    def connectionMade(self) -> None:
        self.pid = self.transport.pid

    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd != _STATUS_FD:
            return
        self._status += data
        *lines, self._status = self._status.split(b"\n")
        self.beat = time.monotonic()
        for line in lines:
            if line == b"ready" and not self.ready:
                self.ready = True
                self.supervisor._ready(self)

    def processEnded(self, reason) -> None:
        self.supervisor._ended(self, reason.value)
        self.ended.callback(None)

    def signal(self, name: str) -> None:
        try:
            self.transport.signalProcess(name)
        except Exception:
            pass  # already gone


class WorkersService(Service):
    """
    Holds the sockets and supervises the workers.

    @param argv: the options the server was started with, for the workers
        to parse as it did.
    @ivar workers: the live worker processes, by number.
    @ivar ports: the listening ports (none accepting here).
    """

    name = "workers"

    def __init__(self, options, argv: list[str], certificate, reactor) -> None:
        self.options = options
        self.count = options["workers"]
        self.argv = list(argv)
        self.certificate = certificate
        self._reactor = reactor
        self.ports: list = []
        self.workers: dict[int, _Worker] = {}
        self.restarts = 0
        self._backoff = [FIRST_BACKOFF] * self.count
        self._pending: dict[int, object] = {}
        self._directory: str | None = None
        self._mesh: list = []
        self._announced = False
        self._stopping = False
        self._watchdog: LoopingCall | None = None
        self._unfed = False
        self._hangs: LoopingCall | None = None
        self._exit_signal_handlers: dict = {}
        self._address: socket.socket | None = None
        self._grpc: socket.socket | None = None
        self._grpc_address: Address | None = None

    # Start: sockets, then workers.

    def privilegedStartService(self) -> None:
        if not self.ports:
            self._listen()
        super().privilegedStartService()

    def _listen(self) -> None:
        serves_grpc = self.options["transport"] == "grpc"
        address = None if serves_grpc else self.options["listen_address"]
        grpc_address = self.options["listen_address"] if serves_grpc else self.options["grpc_listen_address"]
        if grpc_address is not None:
            # gRPC cannot take a listening socket: the workers' servers
            # bind the port together (SO_REUSEPORT), held meanwhile here.
            self._grpc = bind(grpc_address, reuse_port=True)
            self._grpc_address = Address(grpc_address.host, self._grpc.getsockname()[1])
        tls = self.certificate.options()
        factory = Factory.forProtocol(_Refuse)
        factory.noisy = False
        try:
            if address is not None:
                # Bound, listening only once every worker serves.
                sock = self._address = bind(address)
                self._held(adopt_eager_tls(self._reactor, sock.fileno(), sock.family, tls, factory), None)
            for description in self.options["listen"]:
                self._held(listen_endpoint(self._reactor, description, tls, factory), description)
        except Exception:
            for port, _ in self.ports:
                port.stopListening()
            self.ports = []
            for sock in (self._address, self._grpc):
                if sock is not None:
                    sock.close()
            raise
        self._directory = tempfile.mkdtemp(prefix="memmq-workers-")
        os.chmod(self._directory, 0o700)
        factory = Factory.forProtocol(_Refuse)
        factory.noisy = False
        for index in range(self.count):
            path = os.path.join(self._directory, f"mesh-{index}.sock")
            # Held here, never accepting: a restarted worker takes it over,
            # and its peers' connections wait in its backlog meanwhile.
            port = self._reactor.listenUNIX(path, factory, backlog=128)
            port.stopReading()
            self._mesh.append((port, path))
        with open(os.path.join(self._directory, "cert.pem"), "wb") as f:
            f.write(self.certificate.chain_pem())
        key = os.path.join(self._directory, "key.pem")
        with open(os.open(key, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
            f.write(self.certificate.key_pem())

    def _held(self, port, description: str | None) -> None:
        port.stopReading()
        self.ports.append((port, description))

    def startService(self) -> None:
        self.privilegedStartService()
        super().startService()
        if threading.current_thread() is threading.main_thread():
            self._exit_signal_handlers[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._hangup)
        for index in range(self.count):
            self._spawn(index)
        self._hangs = LoopingCall(self._check_hangs)
        self._hangs.clock = self._reactor
        self._hangs.start(BEAT, now=False)

    def _spawn(self, index: int) -> None:
        self._pending.pop(index, None)
        if self._stopping:
            return
        worker = _Worker(self, index)
        child_fds: dict[int, object] = {0: "w", 1: 1, 2: 2, _STATUS_FD: "r"}
        ports = []
        fd = _FIRST_FD
        for port, description in self.ports:
            child_fds[fd] = port.fileno()
            ports.append({"fd": fd, "family": int(port.socket.family), "description": description})
            fd += 1
        mesh_fd = fd
        child_fds[mesh_fd] = self._mesh[index][0].fileno()
        spec = {
            "index": index,
            "count": self.count,
            "parent": os.getpid(),
            "argv": [
                *self.argv,
                f"--cert_file={os.path.join(self._directory, 'cert.pem')}",
                f"--key_file={os.path.join(self._directory, 'key.pem')}",
                *self._grpc_argv(),
            ],
            "ports": ports,
            "grpc": None if self._grpc_address is None else str(self._grpc_address),
            "mesh": [path for _, path in self._mesh],
            "mesh_fd": mesh_fd,
            "status_fd": _STATUS_FD,
            "beat": BEAT,
            # Whether the --address socket listens yet; if not, the parent
            # says "listen" on the worker's standard input once it does.
            "listening": self._announced,
        }
        env = {
            name: value for name, value in os.environ.items()
            if not name.startswith(("LISTEN_", "NOTIFY_SOCKET", "WATCHDOG_"))
        }
        env["MEMMQ_WORKER"] = json.dumps(spec)
        self._reactor.spawnProcess(
            worker, sys.executable, [sys.executable, "-m", "memmq.workers.child"], env=env, childFDs=child_fds,
        )
        self.workers[index] = worker
        worker.started = worker.beat = time.monotonic()

    def _grpc_argv(self) -> list[str]:
        if self._grpc_address is None:
            return []
        name = "address" if self.options["transport"] == "grpc" else "grpc_address"
        return [f"--{name}={self._grpc_address}"]

    # News from the workers.

    def _ready(self, worker: _Worker) -> None:
        if self._announced:
            _log.info("memmq worker {index} (pid {pid}) serving again", index=worker.index, pid=worker.pid)
            return
        if all(self.workers.get(i) is not None and self.workers[i].ready for i in range(self.count)):
            self._announced = True
            self._announce()

    def _announce(self) -> None:
        if self._address is not None:
            # Only now: a client that connects finds every worker serving.
            self._address.listen(BACKLOG)
            for worker in self.workers.values():
                worker.transport.writeToChild(0, b"listen\n")
        for port, description in self.ports:
            announce_listening(_log, port, description, self.certificate.origin)
        if self._grpc_address is not None:
            from memmq.server.rpc import grpc_target

            _log.info(
                "memmq listening for gRPC on {address} (certificate {origin})",
                address=grpc_target(Address(self._grpc_address.host or "::", self._grpc_address.port)),
                origin=self.certificate.origin,
            )
        _log.info(
            "memmq serving with {count} workers (pids {pids})",
            count=self.count, pids=" ".join(str(self.workers[i].pid) for i in range(self.count)),
        )
        if notify(f"READY=1\nSTATUS=serving with {self.count} workers\nMAINPID={os.getpid()}"):
            interval = watchdog_interval()
            if interval is not None:
                self._watchdog = LoopingCall(self._feed_watchdog, interval * 2)
                self._watchdog.clock = self._reactor
                self._watchdog.start(interval, now=True)

    def _feed_watchdog(self, limit: float) -> None:
        # Fed only while every worker beats: a hung worker that is not
        # restarted in time brings systemd's restart of the whole server.
        now = time.monotonic()
        limit = max(limit, BEAT * 4)
        silent = [worker for worker in self.workers.values() if now - worker.beat >= limit]
        if not silent:
            self._unfed = False
            notify("WATCHDOG=1")
        elif not self._unfed:
            # Once, when the feeding stops: the worker that systemd's
            # restart of the server would be for.
            self._unfed = True
            _log.warn(
                "memmq worker {index} (pid {pid}) has not beaten for {seconds:.1f} s: not feeding systemd's watchdog",
                index=silent[0].index, pid=silent[0].pid, seconds=now - silent[0].beat,
            )

    def _check_hangs(self) -> None:
        now = time.monotonic()
        for worker in list(self.workers.values()):
            # Beats start once it serves: a start-up on a busy machine can
            # take longer than the limit.
            if worker.ready and now - worker.beat > HANG_LIMIT:
                _log.warn(
                    "memmq worker {index} (pid {pid}) silent for {seconds:.0f} s: killing it",
                    index=worker.index, pid=worker.pid, seconds=now - worker.beat,
                )
                worker.beat = now
                worker.signal("KILL")

    def _ended(self, worker: _Worker, status) -> None:
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        if self._stopping:
            return
        index = worker.index
        lived = time.monotonic() - worker.started
        if lived > STEADY:
            self._backoff[index] = FIRST_BACKOFF
        delay = self._backoff[index]
        self._backoff[index] = min(delay * 2, MAX_BACKOFF)
        how = f"signal {status.signal}" if getattr(status, "signal", None) else f"status {status.exitCode}"
        _log.warn(
            "memmq worker {index} (pid {pid}) died ({how}); restarting it in {delay:g} s",
            index=index, pid=worker.pid, how=how, delay=delay,
        )
        self.restarts += 1
        self._pending[index] = self._reactor.callLater(delay, self._spawn, index)

    def _hangup(self, signum, frame) -> None:
        self._reactor.callFromThread(self._pass_on, "HUP")

    def _pass_on(self, name: str) -> None:
        _log.info("memmq passing SIG{name} on to {count} workers", name=name, count=len(self.workers))
        for worker in self.workers.values():
            worker.signal(name)

    # Stop: the workers first, then the sockets.

    def stopService(self):
        super().stopService()
        self._stopping = True
        notify("STOPPING=1")
        for loop in (self._watchdog, self._hangs):
            if loop is not None and loop.running:
                loop.stop()
        for call in self._pending.values():
            if call.active():
                call.cancel()
        self._pending.clear()
        for signum, handler in self._exit_signal_handlers.items():
            signal.signal(signum, handler)
        workers = list(self.workers.values())
        _log.info("memmq stopping {count} workers", count=len(workers))
        for worker in workers:
            worker.signal("TERM")

        def kill_stragglers():
            for worker in workers:
                if not worker.ended.called:
                    _log.warn("memmq worker {index} did not stop: killing it", index=worker.index)
                    worker.signal("KILL")

        timer = self._reactor.callLater(STOP_LIMIT, kill_stragglers)

        def done(_):
            if timer.active():
                timer.cancel()
            for port, _description in self.ports:
                port.stopListening()
            for port, _path in self._mesh:
                port.stopListening()
            self.ports, self._mesh = [], []
            for sock in (self._address, self._grpc):
                if sock is not None:
                    sock.close()
            if self._directory is not None:
                shutil.rmtree(self._directory, ignore_errors=True)
                self._directory = None

        return DeferredList([worker.ended for worker in workers]).addCallback(done)
