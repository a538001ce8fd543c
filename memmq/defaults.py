"""
memmq's default values, in one leaf module: the options' defaults and the
modules that use them read them from here, so that parsing the command line
imports nothing heavy (README: Options).

No imports: anything may import this module.
"""

__all__ = [
    "PORT",
    "ADDRESS",
    "SERVER",
    "MAX_MESSAGE_SIZE",
    "MAX_BUFFERED_MESSAGES",
    "MAX_BUFFERED_BYTES",
    "RESOLVE_INTERVAL",
    "RETRIES",
    "FLUSH_INTERVAL",
]

# The port memmq (and asim/mq) listens on, and the one a server named without
# a port is reached on.
PORT = 8081

# --address: every interface, IPv4 and IPv6.
ADDRESS = f":{PORT}"

# The client's server when none is named.
SERVER = f"localhost:{PORT}"

# The largest payload a server accepts (--max_message_size).
MAX_MESSAGE_SIZE = 1024 * 1024

# What each subscriber may hold while its connection is full
# (--max_buffered_messages, --max_buffered_bytes).
MAX_BUFFERED_MESSAGES = 1000
MAX_BUFFERED_BYTES = 8 * 1024 * 1024

# Seconds between DNS lookups with --resolver=dns (--resolve_interval).
RESOLVE_INTERVAL = 30.0

# Extra attempts per server for a publish or subscribe (--retries).
RETRIES = 1

# At most this many seconds between a message and its write to its topic's
# file (--persist_flush_interval).
FLUSH_INTERVAL = 1.0
