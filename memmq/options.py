"""
The command-line options of memmq, shared by C{memmq}, C{python -m memmq}
and C{twistd memmq}.

Validation raises L{usage.UsageError}; L{memmq.tap.Options} is the
command-line face that turns it into one line on stderr and exit status 2.
"""

from __future__ import annotations

import inspect
import os
import re

from twisted.python import usage

from memmq.broker import DEFAULT_MAX_BUFFERED_BYTES, DEFAULT_MAX_BUFFERED_MESSAGES, check_topic
from memmq.client.core import DEFAULT_RESOLVE_INTERVAL, DEFAULT_SERVER
from memmq.client.servers import base_url
from memmq.errors import MemmqError
from memmq.logs import FORMATS
from memmq.persist.writer import DEFAULT_FLUSH_INTERVAL
from memmq.server.listen import EndpointError, ListenError, parse_address, parse_endpoint
from memmq.server.web import DEFAULT_MAX_MESSAGE_SIZE
from memmq.tls import ClientTLS, load_certificate

__all__ = ["MemmqOptions", "parse_size"]

_SIZE = re.compile(r"([0-9]+)\s*(|b|k|kb|kib|m|mb|mib|g|gb|gib)", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(text: str) -> int:
    """
    A size in bytes: a number, optionally with a binary unit (C{512KiB},
    C{8MiB}, C{1G}: K, M and G all count in 1024s).
    """
    match = _SIZE.fullmatch(str(text).strip())
    if not match:
        raise ValueError(f"{text!r} is not a size (for example 1048576, 512KiB or 8MiB)")
    return int(match.group(1)) * _UNITS[match.group(2)[:1].lower()]


def _size(name: str):
    def coerce(text: str) -> int:
        try:
            return parse_size(text)
        except ValueError as e:
            raise ValueError(f"--{name}: {e}") from None
    return coerce


def _count(name: str):
    def coerce(text: str) -> int:
        text = str(text).strip()
        if text.startswith("-") and text[1:].isdigit():
            raise ValueError(f"--{name}: cannot be negative")
        if not (text.isascii() and text.isdigit()):
            raise ValueError(f"--{name}: {text!r} is not a whole number")
        return int(text)
    return coerce


# The options of a client's side: of --client and -i, and of a proxy's
# upstream side.
_CLIENT_SIDE = ("servers", "select", "resolver", "retries", "ca_file", "dns_server", "resolve_interval")


def _seconds(name: str):
    def coerce(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"--{name}: {text!r} is not a number of seconds") from None
        if not value > 0:
            raise ValueError(f"--{name}: must be more than 0")
        return value
    return coerce


def _host_port(name: str):
    def coerce(text: str) -> tuple[str, int]:
        host, sep, port = text.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
            raise ValueError(f"--{name}: {text!r} is not host:port")
        return host, int(port)
    return coerce


class MemmqOptions(usage.Options):
    """
    Options of the server and of the command-line client (SPEC section 2).
    """

    synopsis = (
        "Usage: memmq [server options]\n"
        "       memmq --client --topic=T (--publish | --subscribe) [client options]\n"
        "       memmq -i --topic=T [client options]"
    )
    longdesc = (
        "memmq is an in-memory publish/subscribe message broker, wire-compatible with "
        "asim/mq: POST /pub?topic=T publishes the body, GET /sub?topic=T subscribes over "
        "a WebSocket (or a plain streaming response). TLS is always on; without "
        "--cert_file/--key_file a self-signed certificate is generated at start."
    )

    optFlags = [
        ["access_log", None, "Log every HTTP request (off by default: nothing is logged per request)."],
        ["client", None, "Run the command-line client on --topic, with --publish and/or --subscribe."],
        ["publish", None, "Client: publish each line of standard input (without its newline) to --topic."],
        ["subscribe", None, "Client: print each message of --topic on its own line until interrupted."],
        ["interactive", "i", "Open an interactive prompt on --topic: typed lines are published, "
         "messages from others shown."],
        ["proxy", None, "Run as a proxy: serve the same API in front of --servers (clustered with "
         "--select=all, sharded with --select=shard)."],
        ["persist", None, "Append every message to its topic's file in --persist_dir, one JSON line each "
         "(asim/mq's format: timestamp in Unix ns, topic, base64 payload), written at least every "
         "--persist_flush_interval; subscribers may ask for ?since=<unix ns> to get persisted messages "
         "first. A crash loses at most the last interval's messages; SIGTERM loses none."],
        ["persist_sync", None, "With --persist: durable mode. A publish is answered only once its message "
         "is written and fsynced (concurrent publishes share one fsync); a disk error is a 507. WebSocket "
         "publishes get no reply: one that cannot be persisted closes the connection with 1011."],
    ]
    optParameters = [
        ["address", None, None,
         "Listen address host:port; an empty host listens on every interface, IPv4 and IPv6 "
         "[default: :8081, unless --listen is given]."],
        ["cert_file", None, None,
         "PEM certificate (chain) to serve, with --key_file. Without both, a self-signed "
         "certificate is generated at start."],
        ["key_file", None, None, "PEM private key of --cert_file (unencrypted)."],
        ["max_message_size", None, DEFAULT_MAX_MESSAGE_SIZE,
         "Largest payload accepted, in bytes (KiB/MiB suffixes allowed); larger ones get 413, "
         "or WebSocket close 1009.", _size("max_message_size")],
        ["max_buffered_messages", None, DEFAULT_MAX_BUFFERED_MESSAGES,
         "Per subscriber: messages held while its connection is full; further ones are "
         "dropped for that subscriber alone.", _count("max_buffered_messages")],
        ["log_format", None, "text",
         "text (human-readable; without timestamps under journald) or json (one object per line). "
         "Under twistd use --logger=memmq.logs.json_observer instead."],
        ["max_buffered_bytes", None, DEFAULT_MAX_BUFFERED_BYTES,
         "Per subscriber: payload bytes held while its connection is full (KiB/MiB suffixes "
         "allowed); whichever limit is reached first applies.", _size("max_buffered_bytes")],
        ["persist_dir", None, None,
         "With --persist: the directory of the topics' files, created if missing; file names are "
         "<topic>.mq, percent-encoded outside [A-Za-z0-9._-] [default: the working directory]."],
        ["persist_flush_interval", None, None,
         "With --persist: at most this many seconds between a message and its write to the file "
         f"[default: {DEFAULT_FLUSH_INTERVAL:g}].", _seconds("persist_flush_interval")],
    ]

    optParameters += [
        ["topic", None, None, "Client: the topic to publish or subscribe to."],
        ["since", None, None, "Client, with --subscribe: first the messages the server persisted (it runs "
         "with --persist) stamped after this Unix time in nanoseconds (0: all of them), then live ones.",
         _count("since")],
        ["servers", None, None,
         "Client and proxy: comma-separated servers (host:port, or http(s) URLs) or names for the resolver "
         f"[default: {DEFAULT_SERVER}]."],
        ["select", None, None, "Client: all (every server: cluster) or shard (one server chosen by topic) "
         "[default: all]."],
        ["resolver", None, None, "Client: ip (servers as given) or dns (look names up, refresh every 30 s) "
         "[default: ip]."],
        ["retries", None, None, "Client: extra attempts per server for a publish or subscribe [default: 1].",
         _count("retries")],
        ["ca_file", None, None, "Client: verify servers' certificates against this PEM file "
         "(default: not verified, as asim/mq)."],
        ["dns_server", None, None, "With --resolver=dns: ask this DNS server (host:port) instead of the "
         "system's (e.g. Consul's 127.0.0.1:8600).", _host_port("dns_server")],
        ["resolve_interval", None, None, "With --resolver=dns: seconds between lookups [default: 30].",
         _seconds("resolve_interval")],
    ]

    # The gRPC transport (SPEC section 7).
    optParameters += [
        ["transport", None, "http",
         "http or grpc: what the server serves on --address, and what --client, -i and a proxy's "
         "upstream side speak."],
        ["grpc_address", None, None,
         "Serve gRPC on this host:port as well (a server or proxy with --transport=http), over the "
         "same broker and certificate."],
        ["upstream_transport", None, None,
         "Proxy: http or grpc, what it speaks to --servers [default: as --transport]."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, description: str) -> None:
        """
        Listen on this Twisted server endpoint too, with TLS added; repeatable.
        For example tcp:8081, unix:/run/memmq/memmq.sock, or
        systemd:domain=INET6:name=memmq (socket activation). With --listen,
        --address is listened on only if given as well.
        """
        self["listen"].append(description)

    # --help shows a docstring as it is: without its indentation, as Python
    # 3.13 compiles it anyway.
    opt_listen.__doc__ = inspect.cleandoc(opt_listen.__doc__)

    def opt_version(self) -> None:
        """
        Print memmq's version and exit.
        """
        from memmq import __version__

        print(f"memmq {__version__}")
        raise SystemExit(0)

    def parseArgs(self, *args: str) -> None:
        if args:
            raise usage.UsageError(f"unexpected argument {args[0]!r}")

    def postOptions(self) -> None:
        if self["log_format"] not in FORMATS:
            raise usage.UsageError(f"unknown --log_format {self['log_format']!r}: use text or json")
        self._check_client()
        self._check_persist()
        self._check_transport()
        if self["address"] is None and (not self["listen"] or self["transport"] == "grpc"):
            self["address"] = ":8081"
        try:
            self["listen_address"] = None if self["address"] is None else parse_address(self["address"])
        except MemmqError as e:
            raise usage.UsageError(str(e)) from None
        self._check_listen()
        cert_file, key_file = self["cert_file"], self["key_file"]
        if bool(cert_file) != bool(key_file):
            raise usage.UsageError("--cert_file and --key_file go together: give both or neither")
        self["certificate"] = None
        if cert_file:
            try:
                self["certificate"] = load_certificate(cert_file, key_file)
            except MemmqError as e:
                raise usage.UsageError(str(e)) from None

    def _check_persist(self) -> None:
        """
        The persistence options go with --persist, which goes with a
        server; the directory, made absolute now (twistd may change the
        working directory later), must be one or be creatable.
        """
        if not self["persist"]:
            for name in ("persist_sync", "persist_dir", "persist_flush_interval"):
                if self[name]:
                    raise usage.UsageError(f"--{name} goes with --persist")
            return
        if self["client"] or self["interactive"]:
            raise usage.UsageError("--persist is for the server, not for --client or -i")
        if self["proxy"]:
            raise usage.UsageError(
                "--persist does not go with --proxy: a proxy keeps no messages; run its servers with --persist"
            )
        directory = os.path.abspath(self["persist_dir"] or ".")
        probe = directory
        while not os.path.exists(probe):
            probe = os.path.dirname(probe)
        if not os.path.isdir(probe):
            raise usage.UsageError(f"--persist_dir: {probe} is not a directory")
        self["persist_dir"] = directory
        if self["persist_flush_interval"] is None:
            self["persist_flush_interval"] = DEFAULT_FLUSH_INTERVAL

    def _check_transport(self) -> None:
        """
        Which transport each side speaks: a server serves --transport on
        --address (and gRPC on --grpc_address too); a client speaks
        --transport; a proxy serves as a server does and speaks
        --upstream_transport (or --transport) to its servers.
        """
        for name in ("transport", "upstream_transport"):
            if self[name] is not None and self[name] not in ("http", "grpc"):
                raise usage.UsageError(f"unknown --{name} {self[name]!r}: use http or grpc")
        if self["upstream_transport"] is not None and not self["proxy"]:
            raise usage.UsageError("--upstream_transport goes with --proxy")
        self["upstream_transport"] = self["upstream_transport"] or self["transport"]
        self["grpc_listen_address"] = None
        if self["grpc_address"] is not None:
            if self["client"] or self["interactive"]:
                raise usage.UsageError("--grpc_address is for a server or proxy")
            if self["transport"] == "grpc":
                raise usage.UsageError("--grpc_address goes with --transport=http (gRPC is on --address already)")
            try:
                self["grpc_listen_address"] = parse_address(self["grpc_address"])
            except MemmqError as e:
                raise usage.UsageError(f"--grpc_address: {e}") from None

    def _check_listen(self) -> None:
        """
        Each --listen is an endpoint description Twisted knows; listening on
        it happens at start.
        """
        if not self["listen"]:
            return
        from twisted.internet import reactor  # parsing needs one; nothing listens yet

        for description in self["listen"]:
            try:
                parse_endpoint(reactor, description)
            except EndpointError as e:
                raise usage.UsageError(str(e)) from None
            except ListenError:
                pass  # a socket systemd did not pass: a failure to listen, said at start

    def _check_client(self) -> None:
        """
        The client's options (also a proxy's, for its upstream side), and
        the combinations SPEC section 2 refuses.
        """
        client, interactive, proxy = self["client"], self["interactive"], self["proxy"]
        if client and interactive:
            raise usage.UsageError("--client and -i do not go together")
        if proxy and (client or interactive):
            raise usage.UsageError(f"--proxy does not go with {'--client' if client else '-i'}")
        if (self["publish"] or self["subscribe"]) and not client:
            raise usage.UsageError("--publish and --subscribe go with --client")
        if self["topic"] is not None and not (client or interactive):
            raise usage.UsageError("--topic goes with --client or -i")
        if self["since"] is not None and not self["subscribe"]:
            raise usage.UsageError("--since goes with --client --subscribe")
        if not (client or interactive or proxy):
            for name in _CLIENT_SIDE:
                if self[name] is not None:
                    raise usage.UsageError(f"--{name} goes with --client, -i or --proxy")
            return
        if proxy:
            if self["servers"] is None:
                raise usage.UsageError("--proxy needs --servers")
        else:
            mode = "--client" if client else "-i"
            if self["topic"] is None:
                raise usage.UsageError(f"{mode} needs --topic")
            try:
                check_topic(self["topic"])
            except MemmqError as e:
                raise usage.UsageError(f"--topic: {e}") from None
            if client and not (self["publish"] or self["subscribe"]):
                raise usage.UsageError("--client needs --publish or --subscribe (or both)")
        self["select"] = self["select"] or "all"
        if self["select"] not in ("all", "shard"):
            raise usage.UsageError(f"unknown --select {self['select']!r}: use all or shard")
        self["resolver"] = self["resolver"] or "ip"
        if self["resolver"] not in ("ip", "dns"):
            raise usage.UsageError(f"unknown --resolver {self['resolver']!r}: use ip or dns")
        if self["resolver"] != "dns":
            for name in ("dns_server", "resolve_interval"):
                if self[name] is not None:
                    raise usage.UsageError(f"--{name} goes with --resolver=dns")
        self["retries"] = 1 if self["retries"] is None else self["retries"]
        if self["resolve_interval"] is None:
            self["resolve_interval"] = DEFAULT_RESOLVE_INTERVAL
        servers = [s.strip() for s in (self["servers"] or DEFAULT_SERVER).split(",") if s.strip()]
        if not servers:
            raise usage.UsageError("--servers is empty")
        if self["resolver"] == "ip":
            for server in servers:
                try:
                    base_url(server)
                except MemmqError as e:
                    raise usage.UsageError(str(e)) from None
        self["server_list"] = servers
        if self["ca_file"] is not None:
            try:
                ClientTLS(self["ca_file"])
            except MemmqError as e:
                raise usage.UsageError(str(e)) from None

