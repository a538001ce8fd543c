"""
Where the memmq command's log lines go, and in what form.

- C{text} (the default): one human-readable line per event, with a
  timestamp; under journald (C{$JOURNAL_STREAM} names our stderr) without
  the timestamp, which journald adds itself, and with the C{<N>} syslog
  priority prefix journald reads, so warnings are warnings there.
- C{json}: one JSON object per line, for log shippers: C{time} (ISO 8601,
  UTC), C{level} (C{debug}, C{info}, C{warn}, C{error}, C{critical}),
  C{namespace}, C{message} (rendered), and C{failure} (the traceback) when
  the event carries one.

Under twistd, logging belongs to twistd: C{twistd --logger=memmq.logs.json_observer}
chooses the JSON form there, and C{--logger=memmq.logs.text_observer} the
journald-aware text (what the systemd unit uses).
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    textFileLogObserver,
)

__all__ = ["FORMATS", "observer", "json_line", "json_observer", "text_observer", "say"]

FORMATS = ("text", "json")

# journald's priorities (syslog's): https://www.freedesktop.org/software/systemd/man/sd-daemon.html
_PRIORITY = {LogLevel.debug: 7, LogLevel.info: 6, LogLevel.warn: 4, LogLevel.error: 3, LogLevel.critical: 2}


def say(message: str) -> None:
    """
    Write C{memmq: message} as one line on the process's standard error (file
    descriptor 2, which twistd leaves alone when it sends C{sys.stderr} into
    its log): what a command tells its user when something stops it.
    """
    try:
        os.write(2, f"memmq: {message}\n".encode("utf-8", "replace"))
    except OSError:
        pass


class _CurrentStderr:
    """
    Whatever C{sys.stderr} is when a line is written: the prompt swaps it
    (prompt_toolkit's C{patch_stdout}) so that log lines appear above the
    prompt instead of through it.
    """

    def write(self, text: str) -> None:
        sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _under_journald(environ, stream) -> bool:
    """
    Whether C{stream} is the journal stream systemd connected us to.
    """
    expected = environ.get("JOURNAL_STREAM", "")
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return expected == f"{info.st_dev}:{info.st_ino}"


def _journald_line(event) -> str | None:
    text = formatEvent(event)
    if not text:
        return None
    priority = _PRIORITY.get(event.get("log_level"), 6)
    namespace = event.get("log_namespace", "-")
    lines = text.splitlines() or [""]
    return "".join(f"<{priority}>[{namespace}] {line}\n" for line in lines)


def json_line(event) -> str:
    """
    One log event as one line of JSON: time, level, namespace, the
    rendered message, and the failure's traceback when there is one.
    """
    level = event.get("log_level")
    record = {
        "time": datetime.fromtimestamp(event.get("log_time", 0), UTC).isoformat(timespec="microseconds"),
        "level": level.name if level is not None else "info",
        "namespace": event.get("log_namespace", "-"),
        "message": formatEvent(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        try:
            record["failure"] = failure.getTraceback()
        except Exception:
            record["failure"] = repr(failure)
    return json.dumps(record, ensure_ascii=False) + "\n"


def json_observer(stream=None) -> ILogObserver:
    """
    One JSON object per line (L{json_line}) to C{stream}; without one, to
    standard output as it is now, which makes this twistd's C{--logger}
    factory (twistd calls it before it sends standard output and error to
    the log).
    """
    return FileLogObserver(stream if stream is not None else sys.stdout, json_line)


def text_observer(stream=None, environ=os.environ) -> ILogObserver:
    """
    Readable lines to C{stream} (default: standard output as it is now, so
    this is also a twistd C{--logger} factory): under journald with a
    syslog priority and without the timestamp journald adds, otherwise
    with it.
    """
    stream = stream if stream is not None else sys.stdout
    if _under_journald(environ, stream):
        return FileLogObserver(stream, _journald_line)
    return textFileLogObserver(stream)


def observer(log_format: str, quiet_below: LogLevel, environ=os.environ) -> ILogObserver:
    """
    The observer for the memmq command: C{log_format} as above; events of
    other libraries below C{quiet_below} are left out (memmq's own info
    lines always show).
    """
    if log_format == "json":
        base = json_observer(_CurrentStderr())
    elif _under_journald(environ, sys.stderr):
        base = FileLogObserver(_CurrentStderr(), _journald_line)
    else:
        base = text_observer(_CurrentStderr(), environ)
    levels = LogLevelFilterPredicate(defaultLogLevel=quiet_below)
    levels.setLogLevelForNamespace("memmq", LogLevel.info)
    return FilteringLogObserver(base, [levels])


class RateLimited:
    """
    A warning that may happen often (a slow subscriber dropping messages,
    an upstream refusing publishes): logged at once, then at most once per
    C{interval} seconds, each line saying how many more happened since.
    Never one line per message.
    """

    def __init__(self, logger, clock, interval: float = 10.0) -> None:
        self._logger = logger
        self._clock = clock
        self._interval = interval
        self._last = float("-inf")
        self._suppressed = 0

    def warn(self, format: str, **fields) -> None:
        now = self._clock.seconds()
        if now - self._last < self._interval:
            self._suppressed += 1
            return
        more, self._suppressed, self._last = self._suppressed, 0, now
        suffix = f" ({more} more like this since the last such line)" if more else ""
        self._logger.warn(format + suffix, **fields)
