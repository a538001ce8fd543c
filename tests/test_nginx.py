"""
memmq behind a real nginx (Debian's nginx-light) that terminates TLS, with
the configuration of the README's section "Behind a proxy", taken from the
README itself: WebSocket subscribe and publish, Server-Sent Events
unbuffered, the dashboard, and the client's address in the access log.
"""

from __future__ import annotations

import os
import re
import shutil
import socket

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase

from tests.support import (
    REPO,
    CertificateFiles,
    Child,
    Curl,
    ServerProcess,
    TLSClient,
    bounded,
    dead_port,
    spawn,
    until,
)

NGINX = "/usr/sbin/nginx"


def readme_configuration() -> str:
    """
    The nginx configuration the README shows, as written there.
    """
    with open(os.path.join(REPO, "README.rst"), encoding="utf-8") as f:
        text = f.read()
    after = text.split(".. nginx: configuration", 1)[1]
    block = after.split(".. code-block:: nginx\n\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line[4:])
    return "\n".join(lines).strip() + "\n"


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class NginxTests(TestCase):
    """
    nginx in front of a memmq listening on plain HTTP.
    """

    timeout = 120

    @inlineCallbacks
    def setUp(self):
        if not os.access(NGINX, os.X_OK):
            raise SkipTest(f"{NGINX} is missing: Debian's nginx-light (.ci/run installs it)")
        self.memmq = ServerProcess.spawn(self, [
            "-m", "memmq", "--address=127.0.0.1:0", "--listen=plain:tcp:0:interface=127.0.0.1",
            "--trusted_proxies=127.0.0.1", "--access_log",
        ])
        yield self.memmq.wait_listening()
        yield until(lambda: b"WITHOUT TLS" in self.memmq.output)
        plain = int(re.search(rb"listening on http://127\.0\.0\.1:(\d+)", self.memmq.output).group(1))
        self.certificates = CertificateFiles(self)
        # nginx takes no port 0: a port free a moment ago.
        self.port = dead_port()
        prefix = os.path.abspath(self.mktemp())
        os.makedirs(prefix)
        self.addCleanup(shutil.rmtree, prefix, True)
        site = readme_configuration()
        for old, new in (
            ("server 127.0.0.1:8082;", f"server 127.0.0.1:{plain};"),
            ("listen 443 ssl;", f"listen 127.0.0.1:{self.port} ssl;"),
            ("/etc/ssl/certs/memmq.example.com.pem", self.certificates.cert_file),
            ("/etc/ssl/private/memmq.example.com.key", self.certificates.key_file),
        ):
            self.assertIn(old, site)
            site = site.replace(old, new)
        temp = "".join(
            f"    {kind}_temp_path {prefix}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        configuration = os.path.join(prefix, "nginx.conf")
        with open(configuration, "w") as f:
            f.write(
                "daemon off;\nmaster_process off;\nworker_processes 1;\n"
                f"pid {prefix}/nginx.pid;\nerror_log {prefix}/error.log warn;\n"
                "events { worker_connections 256; }\n"
                f"http {{\n    access_log off;\n{temp}" + site + "}\n"
            )
        self.nginx = Child()
        spawn(self, self.nginx, [NGINX, "-p", prefix, "-e", f"{prefix}/error.log", "-c", configuration],
              env=dict(os.environ))
        for _ in range(200):
            if _listening(self.port) or self.nginx.ended.called:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        if not _listening(self.port):
            with open(f"{prefix}/error.log", errors="replace") as f:
                self.fail(f"nginx did not start: {self.nginx.stderr!r} {f.read()}")
        self.url = f"https://127.0.0.1:{self.port}"
        self.client = TLSClient(self, self.certificates.certificate)

    @inlineCallbacks
    def subscribers(self, count: int):
        """
        Wait until the server (asked through nginx) has C{count} subscribers.
        """
        for _ in range(100):
            response = yield bounded(self.client.http.get(self.url + "/api/server"))
            summary = yield bounded(response.json())
            if summary["subscribers"] >= count:
                return
            yield deferLater(reactor, 0.05, lambda: None)
        self.fail(f"never {count} subscribers")

    @inlineCallbacks
    def test_websocket_and_publish_through_nginx(self):
        """
        A WebSocket subscriber and a POST publisher, both through nginx.
        """
        subscriber = yield self.client.subscribe(self.url, "through")
        yield self.subscribers(1)
        code, _ = yield self.client.publish(self.url, "through", b"via nginx")
        self.assertEqual(code, 200)
        yield subscriber.wait_for(1)
        self.assertEqual(subscriber.messages, [b"via nginx"])

    @inlineCallbacks
    def test_event_stream_unbuffered(self):
        """
        Server-Sent Events through nginx arrive as each message is published.
        """
        curl = shutil.which("curl")
        if curl is None:
            raise SkipTest("curl is not installed (.ci/run installs it)")
        stream = Curl()
        spawn(self, stream, [
            curl, "-s", "-N", "--cacert", self.certificates.cert_file, "-H", "Accept: text/event-stream",
            f"{self.url}/sub?topic=events",
        ], env=dict(os.environ))
        yield stream.seen(b"retry:")
        for n in range(3):
            code, _ = yield self.client.publish(self.url, "events", b"event %d" % n)
            self.assertEqual(code, 200)
            yield stream.seen(b"data: event %d\n\n" % n)

    @inlineCallbacks
    def test_dashboard_and_client_address(self):
        """
        The dashboard comes through; memmq's access log names the address
        nginx forwards (the client's), not nginx's.
        """
        response = yield bounded(self.client.http.get(self.url + "/"))
        self.assertEqual(response.code, 200)
        body = yield bounded(response.content())
        self.assertIn(b"<title>memmq</title>", body)
        code, _ = yield self.client.publish(self.url, "logged", b"x", headers={"X-Forwarded-For": "203.0.113.9"})
        self.assertEqual(code, 200)
        yield until(lambda: b'"203.0.113.9" - - ' in self.memmq.output)
