#!/usr/bin/env python3
"""
A soak run (issue 17): a few minutes of mixed, partly hostile traffic
against memmq processes on loopback, watching that they stay the same size.

    python3 bench/soak.py --minutes 10 [--checkout .]

What runs, all on 127.0.0.1:
- a server with ``--persist`` (into a temporary directory): publishers
  POST numbered messages over kept-alive HTTPS; healthy WebSocket
  subscribers come and go (each lives 5-20 s); one WebSocket subscriber
  never reads (the server should close it, and it comes back); one
  streaming subscriber reads 20 messages a second, fewer than published (it should be dropped
  messages, and counted);
- a proxy (``--proxy``) in front of an upstream server (``--persist``)
  that is restarted every minute, with a publisher and a subscriber
  through it.

Every 10 s it prints the RSS and open descriptors of the server and the
proxy. At the end: messages lost by healthy subscribers (must be 0; a
gap in a publisher's numbers while subscribed is a loss), messages the
slow one missed, how often the never-reading one was closed, and the
growth of RSS and descriptors from the end of the first minute. The exit
status is 1 on any loss or growth past ``--max-rss-growth`` MiB or
``--max-fd-growth`` descriptors, else 0. Bounded: it stops after
``--minutes`` and kills what it started.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

PUBLISHERS = 4
RATE = 50  # messages per second per publisher
PADDING = b"." * 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tls() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class Process:
    """
    A memmq process of the checkout, on its own port; stopped at the end.
    """

    def __init__(self, checkout: str, port: int, *args: str) -> None:
        self.argv = [sys.executable, "-m", "memmq", f"--address=127.0.0.1:{port}", *args]
        self.env = dict(os.environ, PYTHONPATH=os.path.abspath(checkout))
        self.port = port
        self.process: subprocess.Popen | None = None
        self.log = tempfile.TemporaryFile()

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, env=self.env, stdout=self.log, stderr=self.log)

    async def ready(self, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port, ssl=tls())
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.1)
        raise SystemExit(f"soak: nothing listening on {self.port}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def rss_mb(self) -> float:
        try:
            with open(f"/proc/{self.process.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def descriptors(self) -> int:
        try:
            return len(os.listdir(f"/proc/{self.process.pid}/fd"))
        except OSError:
            return 0

    def tracebacks(self) -> int:
        self.log.seek(0)
        return self.log.read().count(b"Traceback")


class Figures:
    def __init__(self) -> None:
        self.published = 0
        self.publish_errors = 0
        self.proxy_published = 0
        self.proxy_errors = 0
        self.healthy_lost = 0
        self.healthy_received = 0
        self.healthy_sessions = 0
        self.slow_missed = 0
        self.slow_received = 0
        self.deaf_closed = 0
        self.proxy_received = 0


async def publisher(port: int, topic: str, name: str, rate: float, stop: float, figures: Figures, proxy: bool) -> None:
    sequence = 0
    while time.monotonic() < stop:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls())
        except OSError:
            await asyncio.sleep(0.5)
            continue
        try:
            while time.monotonic() < stop:
                body = f"{name}:{sequence}:".encode() + PADDING
                writer.write(
                    b"POST /pub?topic=%s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                    % (topic.encode(), len(body), body)
                )
                status = await asyncio.wait_for(reader.readline(), 10)
                ok = status.startswith(b"HTTP/1.1 200")
                length = 0
                while True:
                    line = await asyncio.wait_for(reader.readline(), 10)
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                    if line in (b"\r\n", b""):
                        break
                if length:
                    await reader.readexactly(length)
                if ok:
                    sequence += 1
                    if proxy:
                        figures.proxy_published += 1
                    else:
                        figures.published += 1
                elif proxy:
                    figures.proxy_errors += 1
                else:
                    figures.publish_errors += 1
                if not status:
                    break
                await asyncio.sleep(1 / rate)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
            if proxy:
                figures.proxy_errors += 1
            else:
                figures.publish_errors += 1
        finally:
            writer.close()


async def websocket(port: int, path: str):
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls())
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    if not head.startswith(b"HTTP/1.1 101"):
        writer.close()
        raise OSError("upgrade refused")
    return reader, writer


async def frames(reader):
    """
    The payloads of the server's (unmasked, unfragmented) frames; stops at
    a close frame.
    """
    while True:
        first, second = await reader.readexactly(2)
        length = second & 0x7F
        if length == 126:
            length = int.from_bytes(await reader.readexactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await reader.readexactly(8), "big")
        payload = await reader.readexactly(length)
        if first & 0x0F == 0x8:
            return
        if first & 0x0F in (0x1, 0x2):
            yield payload


def check(payload: bytes, last: dict) -> int:
    """
    Note C{payload} (publisher:number) and return how many of that
    publisher's messages were skipped before it.
    """
    name, number, _ = payload.decode().split(":", 2)
    number = int(number)
    before = last.get(name)
    last[name] = number
    if before is None or number <= before:
        return 0
    return number - before - 1


async def healthy_subscriber(port: int, topic: str, stop: float, figures: Figures) -> None:
    while time.monotonic() < stop:
        life = time.monotonic() + random.uniform(5, 20)
        try:
            reader, writer = await websocket(port, f"/sub?topic={topic}")
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            await asyncio.sleep(0.5)
            continue
        figures.healthy_sessions += 1
        last: dict = {}
        try:
            iterator = frames(reader).__aiter__()
            while time.monotonic() < min(life, stop):
                try:
                    payload = await asyncio.wait_for(iterator.__anext__(), 1)
                except TimeoutError:
                    continue
                figures.healthy_received += 1
                figures.healthy_lost += check(payload, last)
        except (OSError, StopAsyncIteration, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def deaf_subscriber(port: int, topic: str, stop: float, figures: Figures) -> None:
    """
    Subscribes and never reads; the server is to close it (it then comes
    back).
    """
    while time.monotonic() < stop:
        try:
            reader, writer = await websocket(port, f"/sub?topic={topic}")
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            await asyncio.sleep(1)
            continue
        transport = writer.transport
        transport.pause_reading()
        while time.monotonic() < stop and not transport.is_closing():
            # A closed connection shows when a write fails.
            try:
                writer.write(b"\x89\x80\0\0\0\0")  # a ping: its pong is never read
                await asyncio.wait_for(writer.drain(), 1)
            except (TimeoutError, OSError):
                pass
            if reader.at_eof() or reader.exception() is not None or transport.is_closing():
                break
            await asyncio.sleep(1)
        if time.monotonic() < stop:
            figures.deaf_closed += 1
        writer.close()


async def slow_subscriber(port: int, topic: str, stop: float, figures: Figures) -> None:
    """
    A streaming GET /sub with a small receive buffer that takes one message
    every 50 ms (fewer than are published).
    """
    while time.monotonic() < stop:
        try:
            # A small receive buffer, so that the server's side fills soon.
            raw = socket.socket()
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            raw.setblocking(False)
            await asyncio.get_running_loop().sock_connect(raw, ("127.0.0.1", port))
            reader, writer = await asyncio.open_connection(sock=raw, ssl=tls(), server_hostname="", limit=2048)
        except OSError:
            await asyncio.sleep(1)
            continue
        writer.write(f"GET /sub?topic={topic} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        last: dict = {}
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            while time.monotonic() < stop:
                size = int((await asyncio.wait_for(reader.readline(), 60)).strip(), 16)
                payload = await asyncio.wait_for(reader.readexactly(size + 2), 60)
                figures.slow_received += 1
                figures.slow_missed += check(payload[:-2], last)
                await asyncio.sleep(0.05)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()


async def proxy_subscriber(port: int, topic: str, stop: float, figures: Figures) -> None:
    while time.monotonic() < stop:
        try:
            reader, writer = await websocket(port, f"/sub?topic={topic}")
            async for _ in frames(reader):
                figures.proxy_received += 1
                if time.monotonic() >= stop:
                    break
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            await asyncio.sleep(0.5)


async def restarter(upstream: Process, stop: float) -> int:
    restarts = 0
    while True:
        await asyncio.sleep(min(60, max(0, stop - time.monotonic())))
        if time.monotonic() >= stop - 1:
            return restarts
        upstream.stop()
        upstream.start()
        await upstream.ready()
        restarts += 1


async def run(options) -> int:
    directory = tempfile.mkdtemp(prefix="memmq-soak-")
    # Small per-subscriber buffers: the slow subscriber meets them soon.
    server = Process(
        options.checkout, free_port(), "--persist", f"--persist_dir={directory}/server",
        "--max_buffered_messages=100", "--max_buffered_bytes=64KiB",
    )
    upstream = Process(options.checkout, free_port(), "--persist", f"--persist_dir={directory}/upstream")
    proxy = Process(options.checkout, free_port(), "--proxy", f"--servers=127.0.0.1:{upstream.port}")
    processes = [server, upstream, proxy]
    for p in processes:
        p.start()
    try:
        for p in processes:
            await p.ready()
        figures = Figures()
        started = time.monotonic()
        stop = started + options.minutes * 60
        tasks = [
            *(publisher(server.port, "soak", f"p{i}", RATE, stop, figures, False) for i in range(PUBLISHERS)),
            *(healthy_subscriber(server.port, "soak", stop, figures) for _ in range(4)),
            deaf_subscriber(server.port, "soak", stop, figures),
            slow_subscriber(server.port, "soak", stop, figures),
            publisher(proxy.port, "proxied", "x", RATE, stop, figures, True),
            proxy_subscriber(proxy.port, "proxied", stop, figures),
        ]
        running = [asyncio.ensure_future(t) for t in tasks]
        restarts = asyncio.ensure_future(restarter(upstream, stop))
        samples = []
        print("   t  server RSS MiB  fds   proxy RSS MiB  fds   published  lost  slow missed  deaf closed", flush=True)
        while time.monotonic() < stop:
            await asyncio.sleep(min(10, max(0.1, stop - time.monotonic())))
            t = time.monotonic() - started
            sample = (t, server.rss_mb(), server.descriptors(), proxy.rss_mb(), proxy.descriptors())
            samples.append(sample)
            print(
                f"{t:4.0f}  {sample[1]:14.1f}  {sample[2]:3d}   {sample[3]:13.1f}  {sample[4]:3d}"
                f"   {figures.published:9d}  {figures.healthy_lost:4d}  {figures.slow_missed:11d}"
                f"  {figures.deaf_closed:11d}",
                flush=True,
            )
        await asyncio.wait(running, timeout=15)
        for task in running:
            task.cancel()
        restart_count = await restarts
        base = next((s for s in samples if s[0] >= 60), samples[0])
        end = samples[-1]
        growth = {
            "server RSS MiB": end[1] - base[1], "server fds": end[2] - base[2],
            "proxy RSS MiB": end[3] - base[3], "proxy fds": end[4] - base[4],
        }
        print(f"published {figures.published} (errors {figures.publish_errors}); healthy subscriber sessions "
              f"{figures.healthy_sessions}, received {figures.healthy_received}, lost {figures.healthy_lost}")
        print(f"slow subscriber received {figures.slow_received}, missed {figures.slow_missed}; never-reading "
              f"subscriber closed by the server {figures.deaf_closed} times")
        print(f"proxy: published {figures.proxy_published} (errors {figures.proxy_errors} across "
              f"{restart_count} upstream restarts), received {figures.proxy_received}")
        print("growth since the first minute: " + ", ".join(f"{k} {v:+.1f}" for k, v in growth.items()))
        tracebacks = server.tracebacks() + proxy.tracebacks()
        print(f"tracebacks in the logs: {tracebacks}")
        bad = (
            figures.healthy_lost > 0
            or figures.published == 0
            or tracebacks > 0
            or max(growth["server RSS MiB"], growth["proxy RSS MiB"]) > options.max_rss_growth
            or max(growth["server fds"], growth["proxy fds"]) > options.max_fd_growth
        )
        print("FAIL" if bad else "OK")
        return 1 if bad else 0
    finally:
        for p in processes:
            p.stop()
        subprocess.run(["rm", "-rf", directory], check=False)


def _interrupted(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--checkout", default=".")
    parser.add_argument("--max-rss-growth", type=float, default=64.0)
    parser.add_argument("--max-fd-growth", type=int, default=32)
    options = parser.parse_args(argv)
    if not 0 < options.minutes <= 120:
        parser.error("--minutes must be more than 0 and at most 120")
    # SIGTERM as SIGINT: the processes started are stopped on the way out.
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        return asyncio.run(run(options))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
