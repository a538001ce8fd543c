"""
The command-line options of memmq, shared by C{memmq}, C{python -m memmq}
and C{twistd memmq} (README: Options, Client options, gRPC transport).

The options come in groups, one per mode (server, persistence, proxy,
client, gRPC, logging): each group lists its options and checks them, and
C{--help} shows them group by group. Importing this module loads nothing
heavy (no twisted.web, autobahn, gRPC or Prometheus): the defaults come
from L{memmq.defaults}, and what a check needs beyond that is imported when
the check runs.

Validation raises L{usage.UsageError}; the memmq command (L{memmq.script})
turns it into one line on stderr and exit status 2.
"""

from __future__ import annotations

import inspect
import os
import re
import socket
import textwrap
from collections.abc import Callable

from twisted.python import usage

from memmq import defaults
from memmq.broker import check_topic
from memmq.errors import MemmqError
from memmq.logs import FORMATS

__all__ = ["MemmqOptions", "SIZE_UNITS", "format_size", "parse_size"]

# Each unit a size may carry (any case), and what it multiplies by.
SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kib": 1024, "m": 1024**2, "mib": 1024**2, "g": 1024**3, "gib": 1024**3,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3,
}
SIZE_HELP = (
    "Sizes are bytes, or carry a unit (any case): K or KiB = 1024, M or MiB = 1024^2, "
    "G or GiB = 1024^3 bytes; KB = 1000, MB = 1000^2, GB = 1000^3 bytes."
)
_SIZE = re.compile(r"(-?[0-9]+)\s*([a-z]*)", re.IGNORECASE)


def parse_size(text: str) -> int:
    """
    A size in bytes, more than 0: a number with an optional unit of
    L{SIZE_UNITS} (C{512KiB}, C{8MiB}, C{1G}; C{1MB} is 1,000,000 bytes).

    @raise ValueError: the text is not such a size; the message names it.
    """
    match = _SIZE.fullmatch(str(text).strip())
    if not match:
        raise ValueError(f"{text!r} is not a size (for example 1048576, 512KiB or 8MiB)")
    number, unit = int(match.group(1)), match.group(2)
    if unit.lower() not in SIZE_UNITS:
        raise ValueError(f"{text!r}: unknown unit {unit!r} (use B, KiB, MiB, GiB, KB, MB or GB)")
    if number <= 0:
        raise ValueError(f"{text!r}: a size must be more than 0")
    return number * SIZE_UNITS[unit.lower()]


def format_size(size: int) -> str:
    """
    C{size} bytes as a person writes it: C{8 MiB}, C{512 KiB}, C{1000 B}.
    """
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"


def _size(name: str):
    def coerce(text: str) -> int:
        try:
            return parse_size(text)
        except ValueError as e:
            raise ValueError(f"--{name}: {e}") from None
    coerce.is_size = True  # --help shows its default as a size
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


def _refuse(error: MemmqError, prefix: str = "") -> usage.UsageError:
    return usage.UsageError(f"{prefix}{error}")


class _Group:
    """
    One mode's options: their flags and parameters (as L{usage.Options}
    takes them), the C{opt_} methods that belong to it, the title C{--help}
    shows them under, and the check of the parsed values.
    """

    def __init__(self, title: str, flags=(), parameters=(), methods=(), check: Callable | None = None) -> None:
        self.title = title
        self.flags = list(flags)
        self.parameters = list(parameters)
        self.methods = list(methods)
        self.check = check

    def names(self) -> list[str]:
        return [entry[0] for entry in self.flags + self.parameters] + self.methods


def _mode(options) -> str | None:
    """
    The one mode asked for, if any: client, interactive or proxy (a server
    otherwise); two at once are refused.
    """
    client, interactive, proxy = options["client"], options["interactive"], options["proxy"]
    if client and interactive:
        raise usage.UsageError("--client and -i do not go together")
    if proxy and (client or interactive):
        raise usage.UsageError(f"--proxy does not go with {'--client' if client else '-i'}")
    return "client" if client else "interactive" if interactive else "proxy" if proxy else None


# -- the server --------------------------------------------------------------

def _check_server(options) -> None:
    """
    Where to listen (--address, by default unless --listen is given, and
    every --listen endpoint, each parsed now and listened on at start) and
    the certificate, loaded now.
    """
    from memmq.server.listen import EndpointError, ListenError, parse_address, parse_endpoint

    if options["address"] is None and (not options["listen"] or options["transport"] == "grpc"):
        options["address"] = defaults.ADDRESS
    try:
        options["listen_address"] = None if options["address"] is None else parse_address(options["address"])
    except MemmqError as e:
        raise _refuse(e) from None
    if options["listen"]:
        from twisted.internet import reactor  # parsing needs one; nothing listens yet

        for description in options["listen"]:
            try:
                parse_endpoint(reactor, description)
            except EndpointError as e:
                raise _refuse(e) from None
            except ListenError:
                pass  # a socket systemd did not pass: a failure to listen, said at start
    cert_file, key_file = options["cert_file"], options["key_file"]
    if bool(cert_file) != bool(key_file):
        raise usage.UsageError("--cert_file and --key_file go together: give both or neither")
    options["certificate"] = None
    if cert_file:
        from memmq.tls import load_certificate

        try:
            options["certificate"] = load_certificate(cert_file, key_file)
        except MemmqError as e:
            raise _refuse(e) from None


def _opt_listen(self, description: str) -> None:
    """
    Listen on this Twisted server endpoint too, with TLS added; repeatable.
    For example tcp:8081, unix:/run/memmq/memmq.sock, or
    systemd:domain=INET6:name=memmq (socket activation). With --listen,
    --address is listened on only if given as well.
    """
    self["listen"].append(description)


SERVER = _Group(
    "Server",
    flags=[
        ["access_log", None, "Log every HTTP request (off by default: nothing is logged per request)."],
    ],
    parameters=[
        ["address", None, None,
         "Listen address host:port; an empty host listens on every interface, IPv4 and IPv6 "
         f"[default: {defaults.ADDRESS}, unless --listen is given]."],
        ["cert_file", None, None,
         "PEM certificate (chain) to serve, with --key_file. Without both, a self-signed "
         "certificate is generated at start."],
        ["key_file", None, None, "PEM private key of --cert_file (unencrypted)."],
        ["max_message_size", None, defaults.MAX_MESSAGE_SIZE,
         "Largest payload accepted (a size); larger ones get 413, or WebSocket close 1009.",
         _size("max_message_size")],
        ["max_buffered_messages", None, defaults.MAX_BUFFERED_MESSAGES,
         "Per subscriber: messages held while its connection is full; further ones are "
         "dropped for that subscriber alone.", _count("max_buffered_messages")],
        ["max_buffered_bytes", None, defaults.MAX_BUFFERED_BYTES,
         "Per subscriber: payload bytes held while its connection is full (a size); whichever "
         "limit is reached first applies.", _size("max_buffered_bytes")],
    ],
    methods=["listen"],
    check=_check_server,
)


# -- persistence -------------------------------------------------------------

def _check_persist(options) -> None:
    """
    The persistence options go with --persist, which goes with a server;
    the directory, made absolute now (twistd may change the working
    directory later), must be one or be created now.
    """
    if not options["persist"]:
        for name in ("persist_sync", "persist_dir", "persist_flush_interval"):
            if options[name]:
                raise usage.UsageError(f"--{name} goes with --persist")
        return
    if options["client"] or options["interactive"]:
        raise usage.UsageError("--persist is for the server, not for --client or -i")
    if options["proxy"]:
        raise usage.UsageError(
            "--persist does not go with --proxy: a proxy keeps no messages; run its servers with --persist"
        )
    directory = os.path.abspath(options["persist_dir"] or ".")
    probe = directory
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise usage.UsageError(f"--persist_dir: {probe} is not a directory")
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise usage.UsageError(f"--persist_dir: cannot create {directory}: {e.strerror or e}") from None
    options["persist_dir"] = directory
    if options["persist_flush_interval"] is None:
        options["persist_flush_interval"] = defaults.FLUSH_INTERVAL


PERSISTENCE = _Group(
    "Persistence",
    flags=[
        ["persist", None, "Append every message to its topic's file in --persist_dir, one JSON line each "
         "(asim/mq's format: timestamp in Unix ns, topic, base64 payload), written at least every "
         "--persist_flush_interval; subscribers may ask for ?since=<unix ns> to get persisted messages "
         "first. A crash loses at most the last interval's messages; SIGTERM loses none."],
        ["persist_sync", None, "With --persist: durable mode. A publish is answered only once its message "
         "is written and fsynced (concurrent publishes share one fsync); a disk error is a 507. WebSocket "
         "publishes get no reply: one that cannot be persisted closes the connection with 1011."],
    ],
    parameters=[
        ["persist_dir", None, None,
         "With --persist: the directory of the topics' files, created if missing; file names are "
         "<topic>.mq, percent-encoded outside [A-Za-z0-9._-] [default: the working directory]."],
        ["persist_flush_interval", None, None,
         "With --persist: at most this many seconds between a message and its write to the file "
         f"[default: {defaults.FLUSH_INTERVAL:g}].", _seconds("persist_flush_interval")],
    ],
    check=_check_persist,
)


# -- a proxy -----------------------------------------------------------------

def _check_proxy(options) -> None:
    """
    A proxy needs its servers; --upstream_transport goes with it.
    """
    if options["proxy"] and options["servers"] is None:
        raise usage.UsageError("--proxy needs --servers")
    upstream = options["upstream_transport"]
    if upstream is not None and upstream not in ("http", "grpc"):
        raise usage.UsageError(f"unknown --upstream_transport {upstream!r}: use http or grpc")
    if upstream is not None and not options["proxy"]:
        raise usage.UsageError("--upstream_transport goes with --proxy")


def refuse_self(address, servers: list[str], resolver: str) -> None:
    """
    Refuse a proxy that lists itself among its servers: every message it
    forwarded would come back to it.

    Only names used as given can be checked here; for the rest (and for
    cycles through several proxies) the hop limit of L{memmq.hops} holds
    (README: Proxy mode, Loop guard).

    @raise usage.UsageError: one of C{servers} is C{address}.
    """
    if resolver != "ip" or address.port == 0:
        return
    from memmq.client.servers import endpoint_of

    own = {address.host, "localhost", "127.0.0.1", "::1", "0.0.0.0", "::", socket.gethostname()}
    if address.host in ("", "0.0.0.0", "::"):
        own.update(_local_addresses())
    for server in servers:
        _, host, port = endpoint_of(server)
        if port == address.port and host in own:
            raise usage.UsageError(
                f"--servers lists this proxy itself ({server}): a proxy cannot be its own upstream"
            )


def _local_addresses() -> set[str]:
    try:
        return {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
    except OSError:
        return set()


def _check_proxy_listens(options) -> None:
    """
    Once the addresses are known: a proxy does not list itself.
    """
    if options["proxy"]:
        for own in (options["listen_address"], options["grpc_listen_address"]):
            if own is not None:
                refuse_self(own, options["server_list"], options["resolver"])


PROXY = _Group(
    "Proxy",
    flags=[
        ["proxy", None, "Run as a proxy: serve the same API in front of --servers (clustered with "
         "--select=all, sharded with --select=shard)."],
    ],
    parameters=[
        ["upstream_transport", None, None,
         "Proxy: http or grpc, what it speaks to --servers [default: as --transport]."],
    ],
    check=_check_proxy,
)


# -- the command-line client and the prompt ----------------------------------

def _check_client(options) -> None:
    """
    --client publishes and/or subscribes on --topic; -i takes --topic too.
    """
    client, interactive = options["client"], options["interactive"]
    if (options["publish"] or options["subscribe"]) and not client:
        raise usage.UsageError("--publish and --subscribe go with --client")
    if options["topic"] is not None and not (client or interactive):
        raise usage.UsageError("--topic goes with --client or -i")
    if options["since"] is not None and not options["subscribe"]:
        raise usage.UsageError("--since goes with --client --subscribe")
    if not (client or interactive):
        return
    mode = "--client" if client else "-i"
    if options["topic"] is None:
        raise usage.UsageError(f"{mode} needs --topic")
    if not options["topic"]:
        raise usage.UsageError("--topic is empty: name a topic, as --topic=NAME")
    try:
        check_topic(options["topic"])
    except MemmqError as e:
        raise _refuse(e, "--topic: ") from None
    if client and not (options["publish"] or options["subscribe"]):
        raise usage.UsageError("--client needs --publish or --subscribe (or both)")


CLIENT = _Group(
    "Command-line client (--client) and prompt (-i)",
    flags=[
        ["client", None, "Run the command-line client on --topic, with --publish and/or --subscribe."],
        ["interactive", "i", "Open an interactive prompt on --topic: typed lines are published, "
         "messages from others shown."],
        ["publish", None, "Client: publish each line of standard input (without its newline) to --topic."],
        ["subscribe", None, "Client: print each message of --topic on its own line until interrupted."],
    ],
    parameters=[
        ["topic", None, None, "Client: the topic to publish or subscribe to."],
        ["since", None, None, "Client, with --subscribe: first the messages the server persisted (it runs "
         "with --persist) stamped after this Unix time in nanoseconds (0: all of them), then live ones.",
         _count("since")],
    ],
    check=_check_client,
)


# The options of a client's side: of --client and -i, and of a proxy's
# upstream side.
_CLIENT_SIDE = ("servers", "select", "resolver", "retries", "ca_file", "dns_server", "resolve_interval")


def _check_upstream(options) -> None:
    """
    The options of a client's side (--client, -i, and a proxy's upstream
    side): refused without one of them; else defaulted and checked.
    """
    if not (options["client"] or options["interactive"] or options["proxy"]):
        for name in _CLIENT_SIDE:
            if options[name] is not None:
                raise usage.UsageError(f"--{name} goes with --client, -i or --proxy")
        return
    options["select"] = options["select"] or "all"
    if options["select"] not in ("all", "shard"):
        raise usage.UsageError(f"unknown --select {options['select']!r}: use all or shard")
    options["resolver"] = options["resolver"] or "ip"
    if options["resolver"] not in ("ip", "dns"):
        raise usage.UsageError(f"unknown --resolver {options['resolver']!r}: use ip or dns")
    if options["resolver"] != "dns":
        for name in ("dns_server", "resolve_interval"):
            if options[name] is not None:
                raise usage.UsageError(f"--{name} goes with --resolver=dns")
    options["retries"] = defaults.RETRIES if options["retries"] is None else options["retries"]
    if options["resolve_interval"] is None:
        options["resolve_interval"] = defaults.RESOLVE_INTERVAL
    servers = [s.strip() for s in (options["servers"] or defaults.SERVER).split(",") if s.strip()]
    if not servers:
        raise usage.UsageError("--servers is empty")
    if options["resolver"] == "ip":
        from memmq.client.servers import base_url

        for server in servers:
            try:
                base_url(server)
            except MemmqError as e:
                raise _refuse(e) from None
    options["server_list"] = servers
    if options["ca_file"] is not None:
        from memmq.tls import ClientTLS

        try:
            ClientTLS(options["ca_file"])
        except MemmqError as e:
            raise _refuse(e) from None


UPSTREAM = _Group(
    "Servers to talk to (--client, -i, and a proxy's upstream side)",
    parameters=[
        ["servers", None, None,
         "Comma-separated servers (host:port, or http(s) URLs) or names for the resolver "
         f"[default: {defaults.SERVER}]."],
        ["select", None, None, "all (every server: cluster) or shard (one server chosen by topic) "
         "[default: all]."],
        ["resolver", None, None, "ip (servers as given) or dns (look names up, refresh every "
         "--resolve_interval) [default: ip]."],
        ["retries", None, None, f"Extra attempts per server for a publish or subscribe "
         f"[default: {defaults.RETRIES}].", _count("retries")],
        ["ca_file", None, None, "Verify servers' certificates against this PEM file "
         "(default: not verified, as asim/mq)."],
        ["dns_server", None, None, "With --resolver=dns: ask this DNS server (host:port) instead of the "
         "system's (e.g. Consul's 127.0.0.1:8600).", _host_port("dns_server")],
        ["resolve_interval", None, None, "With --resolver=dns: seconds between lookups "
         f"[default: {defaults.RESOLVE_INTERVAL:g}].", _seconds("resolve_interval")],
    ],
    check=_check_upstream,
)


# -- gRPC --------------------------------------------------------------------

def _check_transport(options) -> None:
    """
    Which transport each side speaks: a server serves --transport on
    --address (and gRPC on --grpc_address too); a client speaks
    --transport; a proxy serves as a server does and speaks
    --upstream_transport (or --transport) to its servers (README: gRPC
    transport).
    """
    if options["transport"] not in ("http", "grpc"):
        raise usage.UsageError(f"unknown --transport {options['transport']!r}: use http or grpc")
    options["upstream_transport"] = options["upstream_transport"] or options["transport"]
    options["grpc_listen_address"] = None
    if options["grpc_address"] is not None:
        if options["client"] or options["interactive"]:
            raise usage.UsageError("--grpc_address is for a server or proxy")
        if options["transport"] == "grpc":
            raise usage.UsageError("--grpc_address goes with --transport=http (gRPC is on --address already)")
        from memmq.server.listen import parse_address

        try:
            options["grpc_listen_address"] = parse_address(options["grpc_address"])
        except MemmqError as e:
            raise _refuse(e, "--grpc_address: ") from None


GRPC = _Group(
    "Transport (HTTP/WebSocket or gRPC)",
    parameters=[
        ["transport", None, "http",
         "http or grpc: what the server serves on --address, and what --client, -i and a proxy's "
         "upstream side speak."],
        ["grpc_address", None, None,
         "Serve gRPC on this host:port as well (a server or proxy with --transport=http), over the "
         "same broker and certificate."],
    ],
    check=_check_transport,
)


# -- logging and the rest ----------------------------------------------------

def _check_logging(options) -> None:
    if options["log_format"] not in FORMATS:
        raise usage.UsageError(f"unknown --log_format {options['log_format']!r}: use text or json")


LOGGING = _Group(
    "Logging",
    parameters=[
        ["log_format", None, "text",
         "text (human-readable; without timestamps under journald) or json (one object per line: "
         "twisted.logger's event format). Under twistd use "
         "--logger=memmq.logs.json_observer instead."],
    ],
    check=_check_logging,
)

GENERAL = _Group("General", methods=["help", "version"])

# In the order --help shows them.
GROUPS = (SERVER, PERSISTENCE, PROXY, UPSTREAM, CLIENT, GRPC, LOGGING, GENERAL)

# In the order they run: which mode; then each mode's own options; then,
# once the addresses are known, whether a proxy lists itself.
_CHECKS = (
    _check_logging,
    _mode,
    _check_client,
    _check_proxy,
    _check_upstream,
    _check_persist,
    _check_transport,
    _check_server,
    _check_proxy_listens,
)


class MemmqOptions(usage.Options):
    """
    Every mode's options, gathered from their groups (L{GROUPS}); each
    group checks its own.
    """

    synopsis = (
        "Usage: memmq [server options]\n"
        "       memmq --proxy --servers=LIST [server options] [options of the servers to talk to]\n"
        "       memmq --client --topic=T (--publish | --subscribe) [client options]\n"
        "       memmq -i --topic=T [client options]"
    )
    longdesc = (
        "memmq is an in-memory publish/subscribe message broker, wire-compatible with "
        "asim/mq: POST /pub?topic=T publishes the body, GET /sub?topic=T subscribes over "
        "a WebSocket (or a plain streaming response). TLS is always on; without "
        "--cert_file/--key_file a self-signed certificate is generated at start. " + SIZE_HELP
    )

    optFlags = [flag for group in GROUPS for flag in group.flags]
    optParameters = [parameter for group in GROUPS for parameter in group.parameters]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    # --help shows a docstring as it is: without its indentation, as Python
    # 3.13 compiles it anyway.
    opt_listen = _opt_listen
    opt_listen.__doc__ = inspect.cleandoc(opt_listen.__doc__)

    def opt_version(self) -> None:
        """
        Print memmq's version and exit.
        """
        from memmq import __version__

        print(f"memmq {__version__}")
        raise SystemExit(0)

    opt_version.__doc__ = inspect.cleandoc(opt_version.__doc__)

    def parseArgs(self, *args: str) -> None:
        if args:
            raise usage.UsageError(f"unexpected argument {args[0]!r}")

    def postOptions(self) -> None:
        for check in _CHECKS:
            check(self)

    def getUsage(self, width: int | None = None) -> str:
        """
        The options group by group (L{GROUPS}), sizes as a person writes
        them.
        """
        width = width or int(os.environ.get("COLUMNS", "80"))
        sizes = {entry[0] for group in GROUPS for entry in group.parameters if getattr(entry[-1], "is_size", False)}
        short = {long: key for key, long in self.synonyms.items() if len(key) == 1 and key != long}
        text = []
        for group in GROUPS:
            entries = []
            for name in group.names():
                default = self.defaults.get(name)
                if name in sizes and default is not None:
                    default = format_size(default)
                entries.append({
                    "long": name,
                    "short": short.get(name),
                    "doc": self.docs[name],
                    "optType": "parameter" if name + "=" in self.longOpt else "flag",
                    "default": default,
                    "dispatch": self._dispatch.get(name),
                })
            text.append(f"{group.title}:\n" + "".join(usage.docMakeChunks(entries, width)))
        return "\n" + "\n".join(text) + "\n" + "\n".join(textwrap.wrap(self.longdesc, width)) + "\n"
