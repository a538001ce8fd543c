#!/usr/bin/env python3
"""
Hostile-client probes against fresh servers, side by side (issue 17).

Each probe starts a fresh server on 127.0.0.1 (loopback only), does one
bounded thing to it, and reports a short figure; the table has one column
per variant. Variants are given as in bench/ab.py: NAME=CHECKOUT (a memmq
checkout, run as ``python3 -m memmq``) or NAME=exec:PROGRAM (asim/mq's
binary), optionally ``::SERVER ARGS``.

    python3 bench/probes.py --variant before=/tmp/memmq-before \\
        --variant after=. --variant asim=exec:/tmp/asim-mq/mq

    python3 bench/probes.py --variant after=. --probe pipeline --probe hangs --scale 0.1

``--scale`` shrinks the big counts (600,000 pipelined requests, 1,000,000
pings, 5,000,000 fragments) for a quick run. Every probe is bounded in time
(about a minute at most at full scale); the figures are from a shared
machine, so compare columns of one run.
"""

from __future__ import annotations

import argparse
import os
import resource
import select
import socket
import ssl
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import servers  # noqa: E402
from servers import free_port  # noqa: E402

# Requests, pings, fragments at --scale 1 (the figures).
PIPELINED = 600_000
PINGS = 1_000_000
FRAGMENTS = 5_000_000


def tls_context(max_version=None, ciphers=None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if max_version is not None:
        context.maximum_version = max_version
    if ciphers is not None:
        context.set_ciphers(ciphers)
    return context


def tls_connect(port: int, timeout: float = 5.0, context=None) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        return (context or tls_context()).wrap_socket(raw)
    except BaseException:
        raw.close()
        raise


class Server:
    """
    A fresh server process for one probe; its standard error goes to a
    file whose lines the probe may count.
    """

    def __init__(self, variant: dict, nofile: int | None = None) -> None:
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="probe-", suffix=".log", delete=False)

        def limit():
            if nofile is not None:
                hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))

        self.process = servers.start(
            variant, self.port, stdout=self.log, stderr=self.log, preexec_fn=limit, cwd=tempfile.gettempdir()
        )
        try:
            servers.wait_listening(self.port, time.monotonic() + 60)
        except SystemExit:
            log = open(self.log.name, errors="replace").read()[-300:]
            self.stop()
            raise RuntimeError(f"the server on port {self.port} did not answer in time: {log!r}") from None

    def rss_mb(self) -> float:
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def descriptors(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def soft_nofile(self) -> str:
        with open(f"/proc/{self.process.pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    return line.split()[3]
        return "?"

    def log_lines(self, needle: str | None = None) -> int:
        with open(self.log.name, errors="replace") as f:
            return sum(1 for line in f if needle is None or needle in line)

    def stop(self) -> None:
        servers.stop(self.process, grace=5)
        self.log.close()
        os.unlink(self.log.name)


def closed_by_peer(sock, wait: float) -> bool:
    """
    Whether the server closed C{sock} within C{wait} seconds (anything it
    sends meanwhile is read and dropped).
    """
    deadline = time.monotonic() + wait
    sock.setblocking(False)
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            if poller.poll(min(left, 0.5) * 1000):
                try:
                    if not sock.recv(65536):
                        return True
                except (ssl.SSLWantReadError, BlockingIOError):
                    pass
                except OSError:
                    return True
    finally:
        sock.setblocking(True)


def send_until_stuck(sock, unit: bytes, count: int, server: Server, stuck: float = 10.0, limit: float = 90.0):
    """
    Send C{unit} C{count} times (in batches) without reading; stop when the
    server has not taken a byte for C{stuck} seconds, closed, or after
    C{limit} seconds.  Returns (units sent, peak RSS, how it ended).
    """
    per_batch = max(1, 65536 // len(unit))
    batch = unit * per_batch
    sent = 0
    peak = server.rss_mb()
    sock.settimeout(stuck)
    started = time.monotonic()
    ended = "all sent"
    while sent < count:
        if time.monotonic() - started > limit:
            ended = "time limit"
            break
        try:
            sock.sendall(batch)
        except TimeoutError:
            ended = "server stopped reading"
            break
        except OSError:
            ended = "server closed"
            break
        sent += per_batch
        if sent % (per_batch * 16) == 0:
            peak = max(peak, server.rss_mb())
    # A busy server may still be answering what it read: watch a while.
    for _ in range(10):
        peak = max(peak, server.rss_mb())
        time.sleep(0.5)
    return min(sent, count), peak, ended


def rss_after_leaving(sock, server: Server) -> float:
    try:
        sock.close()
    except OSError:
        pass
    time.sleep(2)
    return server.rss_mb()


def probe_pipeline(variant, scale):
    """600,000 pipelined GET /metrics, answers never read."""
    server = Server(variant)
    try:
        base = server.rss_mb()
        sock = tls_connect(server.port)
        sent, peak, ended = send_until_stuck(
            sock, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", int(PIPELINED * scale), server
        )
        closed = closed_by_peer(sock, 35) if ended == "server stopped reading" else ended == "server closed"
        after = rss_after_leaving(sock, server)
        return f"{sent} sent ({ended}); RSS {base:.0f}->{peak:.0f} MB, {after:.0f} after; closed by server: {closed}"
    finally:
        server.stop()


def websocket(port: int, path: str) -> ssl.SSLSocket:
    sock = tls_connect(port)
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise OSError("closed during the upgrade")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise OSError(f"upgrade refused: {head[:40]!r}")
    return sock


def masked(opcode_byte: int, payload: bytes) -> bytes:
    # A zero mask key leaves the payload as it is.
    assert len(payload) < 126
    return bytes([opcode_byte, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


def probe_pings(variant, scale):
    """1,000,000 WebSocket pings (125 bytes), pongs never read."""
    server = Server(variant)
    try:
        base = server.rss_mb()
        sock = websocket(server.port, "/sub?topic=probe")
        sent, peak, ended = send_until_stuck(sock, masked(0x89, b"p" * 125), int(PINGS * scale), server)
        closed = closed_by_peer(sock, 35) if ended == "server stopped reading" else ended == "server closed"
        after = rss_after_leaving(sock, server)
        return f"{sent} sent ({ended}); RSS {base:.0f}->{peak:.0f} MB, {after:.0f} after; closed by server: {closed}"
    finally:
        server.stop()


def probe_fragments(variant, scale):
    """5,000,000 empty continuation frames after a non-final text frame."""
    server = Server(variant)
    try:
        base = server.rss_mb()
        sock = websocket(server.port, "/pub?topic=probe")
        sock.sendall(masked(0x01, b""))
        sent, peak, ended = send_until_stuck(sock, masked(0x00, b""), int(FRAGMENTS * scale), server)
        after = rss_after_leaving(sock, server)
        return f"{sent} fragments ({ended}); RSS {base:.0f}->{peak:.0f} MB, {after:.0f} after"
    finally:
        server.stop()


def probe_nofile(variant, scale):
    """Started with soft RLIMIT_NOFILE 256 (hard as here): 600 connections."""
    server = Server(variant, nofile=256)
    held = []
    try:
        soft = server.soft_nofile()
        ok = 0
        for _ in range(600):
            try:
                sock = tls_connect(server.port, timeout=2)
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                if sock.recv(12).startswith(b"HTTP/1."):
                    ok += 1
                held.append(sock)
            except OSError:
                pass
        for sock in held:
            sock.close()
        time.sleep(1)
        return f"soft limit {soft}; {ok}/600 answered; {server.log_lines()} log lines"
    finally:
        for sock in held:
            sock.close()
        server.stop()


def probe_slowloris(variant, scale):
    """200 TLS connections dripping a request head, 1 byte / 2 s; 200 TCP connections silent."""
    server = Server(variant)
    drips, silent = [], []
    try:
        for _ in range(200):
            try:
                sock = tls_connect(server.port)
                sock.sendall(b"G")
                drips.append(sock)
            except OSError:
                pass
            silent.append(socket.create_connection(("127.0.0.1", server.port)))
        started = time.monotonic()
        while time.monotonic() - started < 40:
            time.sleep(2)
            for sock in list(drips):
                try:
                    sock.sendall(b"E")
                except OSError:
                    drips.remove(sock)
        # Anything the server closed shows as readable (EOF) now.
        open_drips = sum(1 for s in drips if not closed_by_peer(s, 0.01))
        open_silent = sum(1 for s in silent if not closed_by_peer(s, 0.01))
        timing = server.log_lines("Timing out")
        return (
            f"after 40 s: {open_drips}/200 dripping heads open, {open_silent}/200 silent (no handshake) open; "
            f"{timing} 'Timing out' lines"
        )
    finally:
        for sock in drips + silent:
            sock.close()
        server.stop()


def answer_of(port: int, request: bytes, limit: float = 10.0) -> str:
    sock = tls_connect(port)
    started = time.monotonic()
    try:
        sock.sendall(request)
        sock.settimeout(limit)
        try:
            first = sock.recv(64)
        except TimeoutError:
            return f"no answer in {limit:.0f} s"
        except OSError as e:
            return f"{type(e).__name__} after {time.monotonic() - started:.2f} s"
        status = first.split(b"\r\n")[0].decode("latin-1")[:24] or "closed, no answer"
        return f"{status!r} in {time.monotonic() - started:.2f} s"
    finally:
        sock.close()


def probe_hangs(variant, scale):
    """A 20 KiB header; LF-only line endings; a chunk size of ffffffffffffffff."""
    server = Server(variant)
    try:
        big = answer_of(server.port, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
        lf = answer_of(server.port, b"GET /health HTTP/1.1\nHost: x\n\n")
        chunk = answer_of(
            server.port,
            b"POST /pub?topic=probe HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n",
        )
        return f"20 KiB header: {big}; LF-only: {lf}; chunk size 2^64-1: {chunk}"
    finally:
        server.stop()


def probe_body(variant, scale):
    """An endless chunked body to /pub (refused at 1 MiB): how much is taken."""
    server = Server(variant)
    try:
        sock = tls_connect(server.port)
        sock.sendall(b"POST /pub?topic=probe HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"10000\r\n" + b"a" * 0x10000 + b"\r\n"
        sent, _, ended = send_until_stuck(sock, chunk, int(16384 * max(scale, 0.0625)), server, limit=30)
        closed = ended == "server closed" or closed_by_peer(sock, 10)
        sock.close()
        return f"{sent * 64 // 1024} MiB sent before: {ended}; closed by server: {closed}"
    finally:
        server.stop()


def listen_backlog(port: int) -> str:
    """
    The listening socket's backlog, as ss shows it (Send-Q of a listener).
    """
    try:
        out = subprocess.run(
            ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, timeout=5
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return out[2] if len(out) > 2 else "?"


def probe_backlog(variant, scale):
    """2,000 connects at once: how many are connected within 2 s."""
    server = Server(variant)
    sockets = []
    try:
        for _ in range(2000):
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", server.port))
            except BlockingIOError:
                pass
            sockets.append(s)
        deadline = time.monotonic() + 2
        pending = set(sockets)
        poller = select.poll()
        by_fd = {s.fileno(): s for s in sockets}
        for fd in by_fd:
            poller.register(fd, select.POLLOUT)
        while pending and time.monotonic() < deadline:
            for fd, _ in poller.poll(100):
                poller.unregister(fd)
                if by_fd[fd].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    pending.discard(by_fd[fd])
        return f"listen backlog {listen_backlog(server.port)}; {2000 - len(pending)}/2000 connected within 2 s"
    finally:
        for s in sockets:
            s.close()
        server.stop()


def probe_plain(variant, scale):
    """Plain HTTP on the TLS port."""
    server = Server(variant)
    try:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        try:
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        sock.close()
        if not data:
            return "empty reply"
        status = data.split(b"\r\n")[0].decode("latin-1")
        return repr(status) + " / " + repr(data.split(b"\r\n\r\n", 1)[-1][:60].decode("latin-1"))
    finally:
        server.stop()


def probe_ciphers(variant, scale):
    """TLS 1.2 with only CBC-SHA1 suites offered."""
    server = Server(variant)
    try:
        context = tls_context(
            ssl.TLSVersion.TLSv1_2,
            "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA",
        )
        try:
            sock = tls_connect(server.port, context=context)
        except ssl.SSLError as e:
            return f"refused ({e.reason})"
        cipher = sock.cipher()
        sock.close()
        return f"accepted: {cipher[0]}"
    finally:
        server.stop()


PROBES = {
    "pipeline": probe_pipeline,
    "pings": probe_pings,
    "nofile": probe_nofile,
    "slowloris": probe_slowloris,
    "hangs": probe_hangs,
    "body": probe_body,
    "backlog": probe_backlog,
    "fragments": probe_fragments,
    "plain": probe_plain,
    "ciphers": probe_ciphers,
}


def _interrupted(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", required=True, type=servers.parse_variant)
    parser.add_argument("--probe", action="append", choices=sorted(PROBES), help="default: all")
    parser.add_argument("--scale", type=float, default=1.0)
    options = parser.parse_args(argv)
    # SIGTERM as SIGINT: each probe's server is stopped on the way out.
    import signal

    signal.signal(signal.SIGTERM, _interrupted)
    # The probes hold thousands of sockets at once.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    for name in options.probe or list(PROBES):
        print(f"## {name}: {PROBES[name].__doc__}", flush=True)
        for variant in options.variant:
            try:
                figure = PROBES[name](variant, options.scale)
            except Exception as e:  # a probe that breaks says so in its cell
                figure = f"probe failed: {type(e).__name__}: {e}"
            print(f"  {variant['name']:>8}: {figure}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
