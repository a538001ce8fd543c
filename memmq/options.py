"""
The command-line options of memmq, shared by C{memmq}, C{python -m memmq}
and C{twistd memmq} (README: Options).

The options come in groups, one per mode (server, persistence, proxy,
client, gRPC, logging; the client side's in L{memmq.client_options}): each
group lists its options and checks them, and
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
import textwrap

from twisted.python import usage

from memmq import defaults
from memmq.backplane.options import BACKPLANE, check_backplane
from memmq.client_options import (
    CLIENT,
    OUTPUT_FORMATS,
    PROXY,
    UPSTREAM,
    check_client,
    check_proxy,
    check_proxy_listens,
    check_upstream,
)
from memmq.errors import MemmqError
from memmq.logs import FORMATS
from memmq.values import SIZE_HELP, SIZE_UNITS, Group, count, format_size, parse_size, refuse, seconds, size
from memmq.workers.options import WORKERS, check_workers

__all__ = ["MemmqOptions", "OUTPUT_FORMATS", "SIZE_UNITS", "format_size", "parse_size"]

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
        raise refuse(e) from None
    if options["listen"]:
        from twisted.internet import reactor  # parsing needs one; nothing listens yet

        for description in options["listen"]:
            try:
                parse_endpoint(reactor, description)
            except EndpointError as e:
                raise refuse(e) from None
            except ListenError:
                pass  # a socket systemd did not pass: a failure to listen, said at start
    from memmq.server.forwarded import parse_trusted_proxies

    try:
        options["trusted_proxy_list"] = parse_trusted_proxies([options["trusted_proxies"] or ""])
    except MemmqError as e:
        raise refuse(e) from None
    cert_file, key_file = options["cert_file"], options["key_file"]
    if bool(cert_file) != bool(key_file):
        raise usage.UsageError("--cert_file and --key_file go together: give both or neither")
    options["certificate"] = None
    if cert_file:
        from memmq.tls import load_certificate

        try:
            options["certificate"] = load_certificate(cert_file, key_file)
        except MemmqError as e:
            raise refuse(e) from None


def _check_access(options) -> None:
    """
    Access control (README: Access control): the auth file and JWT key,
    loaded now (a bad or group/world-readable file is one line, exit 2),
    the client CA, and the allowed WebSocket origins.  A server's or a
    proxy's: its own rules for its own clients.
    """
    names = ("auth_file", "jwt_key", "client_ca_file", "allowed_origins")
    if options["client"] or options["interactive"]:
        for name in names:
            if options[name] is not None:
                raise usage.UsageError(f"--{name} is for a server or proxy, not for --client or -i")
        return
    from memmq.auth import AuthConfigError, make_authority

    try:
        options["authority"] = make_authority(auth_file=options["auth_file"], jwt_key=options["jwt_key"])
    except AuthConfigError as e:
        raise refuse(e) from None
    options["client_authorities"] = None
    if options["client_ca_file"] is not None:
        if options["auth_file"] is None:
            raise usage.UsageError(
                "--client_ca_file goes with --auth_file, which names the certificates' subjects"
            )
        from memmq.tls import load_client_authorities

        try:
            options["client_authorities"] = load_client_authorities(options["client_ca_file"])
        except MemmqError as e:
            raise refuse(e, "--client_ca_file: ") from None
    origins = options["allowed_origins"]
    options["origin_list"] = None
    if origins is not None:
        listed = [o.strip() for o in origins.split(",") if o.strip()]
        for origin in listed:
            if "://" not in origin or origin.rstrip("/").count("/") != 2:
                raise usage.UsageError(
                    f"--allowed_origins: {origin!r} is not an origin, scheme://host[:port] "
                    "(as https://chat.example.com)"
                )
        if not listed:
            raise usage.UsageError("--allowed_origins is empty")
        options["origin_list"] = listed


def _opt_listen(self, description: str) -> None:
    """
    Listen on this Twisted server endpoint too, with TLS added; repeatable.
    For example tcp:8081, unix:/run/memmq/memmq.sock, or
    systemd:domain=INET6:name=memmq (socket activation). With --listen,
    --address is listened on only if given as well. Prefixed plain: (as in
    plain:tcp:8080:interface=127.0.0.1), plain HTTP without TLS, for a proxy
    that terminates TLS in front.
    """
    self["listen"].append(description)


SERVER = Group(
    "Server options",
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
         size("max_message_size")],
        ["max_buffered_messages", None, defaults.MAX_BUFFERED_MESSAGES,
         "Per subscriber: messages held while its connection is full; further ones are "
         "dropped for that subscriber alone.", count("max_buffered_messages")],
        ["max_buffered_bytes", None, defaults.MAX_BUFFERED_BYTES,
         "Per subscriber: payload bytes held while its connection is full (a size); whichever "
         "limit is reached first applies.", size("max_buffered_bytes")],
        ["auth_file", None, None,
         "Access control: the TOML file of tokens (as hashes), certificate names and their permissions "
         "(README: Access control); it must be private (chmod 600). SIGHUP reloads it. Without it and "
         "--jwt_key, access control is off: anyone may do anything."],
        ["jwt_key", None, None,
         "Access control: accept JWTs checked with this key file (an HS256 secret of 32 bytes or more, "
         "or an RS256/ES256 PEM public key), with their permissions in the memmq claim."],
        ["client_ca_file", None, None,
         "With --auth_file: ask clients for a TLS certificate (not required), verified against this "
         "PEM CA file; its CN or a SAN names the user in the auth file."],
        ["allowed_origins", None, None,
         "Comma-separated origins (https://chat.example.com) a browser's WebSocket may come from; "
         "others get 403 [default: any]."],
        ["trusted_proxies", None, None,
         "Comma-separated addresses and networks (10.0.0.0/8), or unix, of proxies whose "
         "X-Forwarded-For and X-Forwarded-Proto are believed (access log, access control)."],
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


PERSISTENCE = Group(
    "Persistence options",
    flags=[
        ["persist", None, "Append every message to its topic's file in --persist_dir, one JSON line each "
         "(asim/mq's format: timestamp in Unix ns, topic, base64 payload), written at least every "
         "--persist_flush_interval; subscribers may ask for ?since=<unix ns> to get persisted messages "
         "first. A crash loses at most the last interval's messages; SIGTERM loses none. With --workers, "
         "each topic's file is written by one worker (its owner), and its publishes get 503 while that "
         "worker is being restarted."],
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
         f"[default: {defaults.FLUSH_INTERVAL:g}].", seconds("persist_flush_interval")],
    ],
    check=_check_persist,
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
            raise refuse(e, "--grpc_address: ") from None


GRPC = Group(
    "Transport options",
    note="HTTP/WebSocket or gRPC",
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


LOGGING = Group(
    "Logging options",
    parameters=[
        ["log_format", None, "text",
         "text (human-readable; without timestamps under journald) or json (one object per line: "
         "time, level, namespace, message, and failure when there is one). Under twistd use "
         "--logger=memmq.logs.json_observer instead."],
    ],
    check=_check_logging,
)

GENERAL = Group("Other options", methods=["help", "version"])

# In the order --help shows them.
GROUPS = (SERVER, WORKERS, PERSISTENCE, BACKPLANE, PROXY, CLIENT, UPSTREAM, GRPC, LOGGING, GENERAL)

# In the order they run: which mode; then each mode's own options; then,
# once the addresses are known, whether a proxy lists itself.
_CHECKS = (
    _check_logging,
    _mode,
    check_client,
    check_proxy,
    check_upstream,
    _check_persist,
    check_backplane,
    _check_transport,
    _check_server,
    _check_access,
    check_proxy_listens,
    check_workers,
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
        "       memmq -i --topic=T [client options]\n"
        "       memmq auth token | hash < FILE | check FILE   (tokens for --auth_file)"
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
            note = f" ({group.note})" if group.note else ""
            text.append(f"{group.title}{note}:\n" + "".join(usage.docMakeChunks(entries, width)))
        return "\n" + "\n".join(text) + "\n" + "\n".join(textwrap.wrap(self.longdesc, width)) + "\n"
