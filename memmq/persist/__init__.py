"""
Persistence (C{--persist}): every message appended to its topic's file in
asim/mq's format, durably on request (C{--persist_sync}), and replayed to
subscribers that ask for C{since}.

    record   one message as one line, byte for byte as asim/mq writes it
    names    a topic's file name: never a path
    files    the blocking file work of the writer thread
    writer   the Persister service: stamps, batches, writes off the reactor
    broker   the IBroker that publishes and persists
    replay   persisted messages first, then live ones, seamlessly
"""

from memmq.persist.broker import PersistingBroker
from memmq.persist.names import file_name
from memmq.persist.record import Record, parse
from memmq.persist.replay import Replay
from memmq.persist.writer import DEFAULT_FLUSH_INTERVAL, Persister

__all__ = ["DEFAULT_FLUSH_INTERVAL", "PersistingBroker", "Persister", "Record", "Replay", "file_name", "parse"]
