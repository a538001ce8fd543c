"""
The options of memmq's client side (README: Client options, Upstream
options, Proxy options): the command-line client and the prompt, the servers
they and a proxy talk to, and a proxy's own; each group checks its own.
"""

from __future__ import annotations

import os
import socket

from twisted.python import usage

from memmq import defaults
from memmq.broker import check_group, check_topic
from memmq.errors import MemmqError
from memmq.patterns import parse_pattern
from memmq.values import Group, count, host_port, refuse, seconds

__all__ = ["CLIENT", "OUTPUT_FORMATS", "PROXY", "UPSTREAM", "check_client", "check_proxy", "check_proxy_listens",
           "check_upstream", "refuse_self"]

# What --subscribe prints per message (see memmq.cli).
OUTPUT_FORMATS = ("raw", "json", "line")


# -- a proxy -----------------------------------------------------------------

def check_proxy(options) -> None:
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


def check_proxy_listens(options) -> None:
    """
    Once the addresses are known: a proxy does not list itself.
    """
    if options["proxy"]:
        for own in (options["listen_address"], options["grpc_listen_address"]):
            if own is not None:
                refuse_self(own, options["server_list"], options["resolver"])


PROXY = Group(
    "Proxy options",
    flags=[
        ["proxy", None, "Run as a proxy: serve the same API in front of --servers (clustered with "
         "--select=all, sharded with --select=shard)."],
    ],
    parameters=[
        ["upstream_transport", None, None,
         "Proxy: http or grpc, what it speaks to --servers [default: as --transport]."],
    ],
    check=check_proxy,
)


# -- the command-line client and the prompt ----------------------------------

def check_client(options) -> None:
    """
    --client publishes and/or subscribes on --topic; -i takes --topic too.
    """
    client, interactive = options["client"], options["interactive"]
    if (options["publish"] or options["subscribe"]) and not client:
        raise usage.UsageError("--publish and --subscribe go with --client")
    if options["topic"] is not None and not (client or interactive):
        raise usage.UsageError("--topic goes with --client or -i")
    for name in ("pattern", "group"):
        if options[name] is not None and not (options["subscribe"] or interactive):
            raise usage.UsageError(f"--{name} goes with --client --subscribe or -i")
    if options["since"] is not None and not options["subscribe"]:
        raise usage.UsageError("--since goes with --client --subscribe")
    if options["output_format"] is not None and not options["subscribe"]:
        raise usage.UsageError("--output_format goes with --client --subscribe")
    if not (client or interactive):
        return
    mode = "--client" if client else "-i"
    _check_subject(options)
    if options["topic"] is None and (options["pattern"] is None or options["publish"] or interactive):
        raise usage.UsageError(f"{mode} needs --topic" + (" to publish to" if options["pattern"] else ""))
    if client and not (options["publish"] or options["subscribe"]):
        raise usage.UsageError("--client needs --publish or --subscribe (or both)")
    options["output_format"] = options["output_format"] or "raw"
    if options["output_format"] not in OUTPUT_FORMATS:
        raise usage.UsageError(f"unknown --output_format {options['output_format']!r}: use raw, json or line")


def _check_subject(options) -> None:
    """
    --topic, --pattern and --group, each acceptable if given.
    """
    if options["topic"] is not None:
        if not options["topic"]:
            raise usage.UsageError("--topic is empty: name a topic, as --topic=NAME")
        try:
            check_topic(options["topic"])
        except MemmqError as e:
            raise refuse(e, "--topic: ") from None
    if options["pattern"] is not None:
        try:
            parse_pattern(options["pattern"])
        except MemmqError as e:
            raise refuse(e, "--pattern: ") from None
    if options["group"] is not None:
        try:
            check_group(options["group"])
        except MemmqError as e:
            raise refuse(e, "--group: ") from None


CLIENT = Group(
    "Client options",
    note="the command-line client, --client, and the prompt, -i",
    flags=[
        ["client", None, "Run the command-line client on --topic, with --publish and/or --subscribe."],
        ["interactive", "i", "Open an interactive prompt on --topic: typed lines are published, "
         "messages from others shown."],
        ["publish", None, "Client: publish each line of standard input (without its newline) to --topic; "
         "a summary (count, time, failures) goes to stderr at the end, and progress while stderr is a "
         "terminal."],
        ["subscribe", None, "Client: print each message of --topic (as --output_format says) until "
         "interrupted."],
    ],
    parameters=[
        ["topic", None, None, "Client: the topic to publish or subscribe to."],
        ["pattern", None, None, "Client, with --subscribe or -i: subscribe to every topic this pattern "
         "matches instead of --topic (a token * matches one token, a last token > one or more: "
         "orders.*, orders.>); -i still publishes to --topic."],
        ["group", None, None, "Client, with --subscribe or -i: subscribe in this queue group: each "
         "message goes to one subscriber of the group."],
        ["since", None, None, "Client, with --subscribe: first the messages the server persisted (it runs "
         "with --persist) stamped after this Unix time in nanoseconds (0: all of them), then live ones.",
         count("since")],
        ["output_format", None, None, "Client, with --subscribe: raw (each payload as it is, then a "
         "newline), json (one object per line: topic, time received, payload, and encoding: utf-8, or "
         "base64 when the payload is not UTF-8) or line (topic: payload) [default: raw]."],
    ],
    check=check_client,
)


# The options of a client's side: of --client and -i, and of a proxy's
# upstream side.
_CLIENT_SIDE = (
    "servers", "select", "resolver", "retries", "ca_file", "dns_server", "resolve_interval", "token_file",
    "client_cert_file", "client_key_file",
)

#: The environment variable a client's token may come from, rather than a
#: file; never from the command line, where ps shows it.
TOKEN_VARIABLE = "MEMMQ_TOKEN"


def _token(options) -> str | None:
    """
    The token to present: the first line of --token_file, else
    $MEMMQ_TOKEN, else none.
    """
    path = options["token_file"]
    if path is None:
        return os.environ.get(TOKEN_VARIABLE, "").strip() or None
    try:
        with open(path, encoding="utf-8") as f:
            token = f.readline().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise usage.UsageError(f"--token_file: cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    if not token:
        raise usage.UsageError(f"--token_file: {path} holds no token")
    if token.lower().startswith("bearer "):
        token = token[7:].strip()
    return token


def check_upstream(options) -> None:
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
                raise refuse(e) from None
    options["server_list"] = servers
    options["token"] = _token(options)
    options["client_cert"] = _client_cert(options)
    if options["ca_file"] is not None or options["client_cert"] is not None:
        from memmq.tls import ClientTLS

        try:
            ClientTLS(options["ca_file"], options["client_cert"])
        except MemmqError as e:
            raise refuse(e) from None


def _client_cert(options) -> str | tuple[str, str] | None:
    """
    The client certificate to present, as the client library takes it: one
    PEM file holding the certificate and its key, or the pair of files.
    """
    cert_file, key_file = options["client_cert_file"], options["client_key_file"]
    if key_file is not None and cert_file is None:
        raise usage.UsageError("--client_key_file goes with --client_cert_file")
    if cert_file is None:
        return None
    return cert_file if key_file is None else (cert_file, key_file)


UPSTREAM = Group(
    "Upstream options",
    note="the servers that --client, -i and --proxy talk to",
    parameters=[
        ["servers", None, None,
         "Comma-separated servers (host:port, or http(s) URLs) or names for the resolver "
         f"[default: {defaults.SERVER}]."],
        ["select", None, None, "all (every server: cluster) or shard (one server chosen by topic) "
         "[default: all]."],
        ["resolver", None, None, "ip (servers as given) or dns (look names up, refresh every "
         "--resolve_interval) [default: ip]."],
        ["retries", None, None, f"Extra attempts per server for a publish or subscribe "
         f"[default: {defaults.RETRIES}].", count("retries")],
        ["ca_file", None, None, "Verify servers' certificates against this PEM file "
         "(default: not verified, as asim/mq)."],
        ["dns_server", None, None, "With --resolver=dns: ask this DNS server (host:port) instead of the "
         "system's (e.g. Consul's 127.0.0.1:8600).", host_port("dns_server")],
        ["resolve_interval", None, None, "With --resolver=dns: seconds between lookups "
         f"[default: {defaults.RESOLVE_INTERVAL:g}].", seconds("resolve_interval")],
        ["token_file", None, None, "Present the token (or JWT) on this file's first line to the servers, "
         f"for their access control [default: ${TOKEN_VARIABLE}, if set]. There is no --token: ps would "
         "show it."],
        ["client_cert_file", None, None, "Present this TLS client certificate (PEM, with its key unless "
         "--client_key_file) to the servers, for their access control (--client_ca_file)."],
        ["client_key_file", None, None, "With --client_cert_file: the client certificate's key (PEM)."],
    ],
    check=check_upstream,
)
